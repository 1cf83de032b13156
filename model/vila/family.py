"""The VILA family as a model: its checkpoint loader and its evaluation adapter (`model/families.py`).

Its training stages (vila_projector, vila_pretrain, vila_sft and the mini world's stand-ins) are declared in
`train/vila/__init__.py`.
"""

from __future__ import annotations

from model.families import Family, register_family

FAMILY = register_family(
    Family(
        name="vila",
        title="VILA (CVPR 2024)",
        loader="model.vila.checkpoints:load_for_eval",
        checkpoint_help=(
            "a released VILA directory (config.json model_type llava_llama, or llm/ vision_tower/ mm_projector/), "
            "a save_pretrained directory of VilaForCausalLM, or a run directory of `python -m train vila_sft`"
        ),
    )
)
