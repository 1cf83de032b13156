"""The LaVIT family as a model: its checkpoint loader and its evaluation adapter (`model/families.py`).

Its training stages (tokenizer, pixel_decoder, unified and the mini world's stand-ins) are declared in
`train/lavit/__init__.py`.
"""

from __future__ import annotations

from model.families import Family, register_family

FAMILY = register_family(
    Family(
        name="lavit",
        title="LaVIT (ICLR 2024)",
        loader="model.lavit.checkpoints:load_for_eval",
        checkpoint_help=(
            "a released LaVIT directory (language_model/, visual_tokenizer/[, pixel_decoding/]) "
            "or a run directory of `python -m train unified` (config.yaml, checkpoints/step_*/); "
            "a run of `python -m train llm_pretrain` loads as its text-only LLM (text tasks only)"
        ),
    )
)
