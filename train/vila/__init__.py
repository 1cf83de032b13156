"""VILA's training stages as trainer tasks, declared here to the launcher (`train/registry.py`); the model side of the
family (loader, evaluation adapter) is `model/vila/family.py`, its data formats `model/vila/data.py`.

    vila_projector        -> projector.py         (stage 0)
    vila_pretrain         -> pretrain.py          (stage 1)
    vila_sft              -> sft.py               (stage 2)
    vila_vision_pretrain  -> vision_pretrain.py   (the mini world's stand-in for the released CLIP tower)
    vila_llm_pretrain     -> llm_pretrain.py      (the mini world's stand-in for Llama-2)
    configs and presets   -> config.py; what the stages share -> common.py

Stage chain (paper §2 "Training stages"): vila_projector (0) -> vila_pretrain (1) -> vila_sft (2), each starting from
the previous run's whole model (`init_from`). Stage 0 starts from the released Llama-2 and CLIP ViT-L/14 at paper
scale; in the mini world from two stand-ins trained on its train split:

    vila_llm_pretrain     a text-only LLaMA of the mini LLM shapes trained on the mini world's corpus with its tokenizer:
                          LaVIT's `llm_pretrain` task under a VILA name (the table machinery keeps a chain inside one
                          family); its `language_model.*` weights are vila_projector's llm_path. A LaVIT
                          `llm_pretrain` run of the same shapes (Table 1's, with text_tokenizer=<world>/tokenizer and
                          model.llm.text_vocab_size=512) loads just as well
    vila_vision_pretrain  VILA's own CLIP vision tower (transformers CLIPVisionModel of the mini shapes) trained
                          contrastively on the mini world's captions (`vision_tower_path`)

The mini chain (every stage with `--config mini`; ~4 minutes on 2 shared CPU cores, measured 2026-11-29):

    python -m train vila_llm_pretrain    --config mini --output-dir R/llm                 # 15 s
    python -m train vila_vision_pretrain --config mini --output-dir R/vision              # 44 s
    python -m train vila_projector --config mini --output-dir R/projector --set llm_path=R/llm --set vision_tower_path=R/vision   # 19 s
    python -m train vila_pretrain  --config mini --output-dir R/pretrain --set init_from=R/projector                              # 66 s
    python -m train vila_sft       --config mini --output-dir R/sft --set init_from=R/pretrain                                   # 46 s

(the mini world at runs/miniworld: `data.miniworld` overrides it). Losses (first 10% -> last 10% of steps): stage 0
3.13 -> 2.06, stage 1 1.33 -> 0.44, stage 2 1.13 -> 0.34; the SFT model's caption loss is 0.34 with the right images
and 0.96 with images shuffled across the batch; exact-match VQA on the first 500 mini-world test questions 50.0%
(answer prior 33.8%); its captions of 100 test images name the colour 97% and the shape 38% of the time.
"""

from __future__ import annotations

from train.registry import StageSpec, register_stages

_CONFIG = "train.vila.config"

STAGES = register_stages(
    StageSpec(
        name="vila_vision_pretrain",
        family="vila",
        config=f"{_CONFIG}:VisionPretrainStageConfig",
        task="train.vila.vision_pretrain:VisionPretrainTask",
        summary="mini-world stand-in for CLIP ViT-L/14: contrastive pre-training of VILA's vision tower",
        produces="vision tower weights (keys vision_tower.clip.*), loaded by vila_projector's vision_tower_path",
    ),
    StageSpec(
        name="vila_llm_pretrain",
        family="vila",
        config=f"{_CONFIG}:LlmPretrainStageConfig",
        task="train.vila.llm_pretrain:LlmPretrainTask",
        summary="mini-world stand-in for Llama-2: LaVIT's text-only LLM pre-training with VILA's LLM shapes",
        produces="LlamaForCausalLM weights (keys language_model.*), loaded by vila_projector's llm_path",
    ),
    StageSpec(
        name="vila_projector",
        family="vila",
        config=f"{_CONFIG}:ProjectorStageConfig",
        task="train.vila.projector:ProjectorTask",
        summary="stage 0: projector initialisation on image-caption pairs (ViT and LLM frozen)",
        upstream={"llm_path": "vila_llm_pretrain", "vision_tower_path": "vila_vision_pretrain"},
        produces="a whole VILA model (VilaForCausalLM keys), loaded by vila_pretrain's init_from",
    ),
    StageSpec(
        name="vila_pretrain",
        family="vila",
        config=f"{_CONFIG}:PretrainStageConfig",
        task="train.vila.pretrain:PretrainTask",
        summary="stage 1: visual language pre-training of LLM + projector on MMC4 documents and COYO pairs",
        upstream={"init_from": "vila_projector"},
        produces="a whole VILA model (VilaForCausalLM keys), loaded by vila_sft's init_from",
    ),
    StageSpec(
        name="vila_sft",
        family="vila",
        config=f"{_CONFIG}:SftStageConfig",
        task="train.vila.sft:SftTask",
        summary="stage 2: visual instruction tuning (joint SFT with text-only instructions)",
        upstream={"init_from": "vila_pretrain"},
        produces="a whole VILA model (VilaForCausalLM keys); evaluable with python -m eval",
    ),
)
