"""The LaVIT family: its training stages, its checkpoint loader and its evaluation adapter (`model/families.py`).

Stage chain (paper §3.3): tokenizer (1a) -> pixel_decoder (1b) and tokenizer (1a) -> unified (2). The mini world
adds two stand-ins for the pretrained parts the paper starts from: `encoder_pretrain` (a tiny ViT trained
contrastively on the mini world's captions, in place of EVA-CLIP) and `llm_pretrain` (a tiny LLaMA trained on its
text corpus, in place of LLaMA-7B).
"""

from __future__ import annotations

from model.families import Family, StageSpec, register_family

_CONFIG = "model.lavit.stages.config"

FAMILY = register_family(
    Family(
        name="lavit",
        title="LaVIT (ICLR 2024)",
        stages=(
            StageSpec(
                name="encoder_pretrain",
                config=f"{_CONFIG}:EncoderPretrainStageConfig",
                task="model.lavit.stages.encoder_pretrain:EncoderPretrainTask",
                summary="mini-world stand-in for EVA-CLIP: contrastive pre-training of the tokenizer's ViT",
                produces="ViT weights (keys encoder.*, as the tokenizer's), loaded by stage 1a's encoder_path",
            ),
            StageSpec(
                name="llm_pretrain",
                config=f"{_CONFIG}:LlmPretrainStageConfig",
                task="model.lavit.stages.llm_pretrain:LlmPretrainTask",
                summary="mini-world stand-in for LLaMA: causal-LM pre-training of the text-only LLM",
                produces="LlamaForCausalLM weights (keys language_model.*), loaded by stage 2's llm_path",
            ),
            StageSpec(
                name="tokenizer",
                config=f"{_CONFIG}:TokenizerStageConfig",
                task="model.lavit.stages.tokenizer:TokenizerTask",
                summary="stage 1a: the dynamic visual tokenizer (Eq. 4)",
                upstream={"encoder_path": "encoder_pretrain"},
                produces="visual tokenizer weights (keys tokenizer.*)",
            ),
            StageSpec(
                name="pixel_decoder",
                config=f"{_CONFIG}:PixelDecoderStageConfig",
                task="model.lavit.stages.pixel_decoder:PixelDecoderTask",
                summary="stage 1b: the conditional U-Net pixel decoder (Eq. 5)",
                upstream={"tokenizer_checkpoint": "tokenizer"},
                produces="pixel decoder weights (keys pixel_decoder.unet.*)",
            ),
            StageSpec(
                name="unified",
                config=f"{_CONFIG}:UnifiedStageConfig",
                task="model.lavit.stages.unified:UnifiedTask",
                summary="stage 2: unified vision-language pre-training of the LLM (Eq. 6)",
                upstream={"tokenizer_checkpoint": "tokenizer", "llm_path": "llm_pretrain"},
                produces="LaVIT without its frozen tokenizer (keys lavit.*); evaluable with python -m eval",
            ),
        ),
        loader="model.lavit.checkpoints:load_for_eval",
        checkpoint_help=(
            "a released LaVIT directory (language_model/, visual_tokenizer/[, pixel_decoding/]) "
            "or a run directory of `python -m train unified` (config.yaml, checkpoints/step_*/); "
            "a run of `python -m train llm_pretrain` loads as its text-only LLM (text tasks only)"
        ),
    )
)
