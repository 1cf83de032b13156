"""LaVIT's training stages (paper §3.3) as trainer tasks, declared here to the launcher (`train/registry.py`).

    tokenizer         -> tokenizer.py         (stage 1a, Eq. 4)
    pixel_decoder     -> pixel_decoder.py     (stage 1b, Eq. 5)
    unified           -> unified.py           (stage 2, Eq. 6)
    encoder_pretrain  -> encoder_pretrain.py  (the mini world's stand-in for EVA-CLIP)
    llm_pretrain      -> llm_pretrain.py      (the mini world's stand-in for LLaMA-7B)

Stage chain: tokenizer (1a) -> pixel_decoder (1b) and tokenizer (1a) -> unified (2). The mini world adds two stand-ins
for the pretrained parts the paper starts from: `encoder_pretrain` (a tiny ViT trained contrastively on the mini
world's captions, in place of EVA-CLIP) and `llm_pretrain` (a tiny LLaMA trained on its text corpus, in place of
LLaMA-7B). Configs and presets: config.py. The model side of the family (loader, evaluation adapter):
`model/lavit/family.py`.
"""

from __future__ import annotations

from train.registry import StageSpec, register_stages

_CONFIG = "train.lavit.config"

STAGES = register_stages(
    StageSpec(
        name="encoder_pretrain",
        family="lavit",
        config=f"{_CONFIG}:EncoderPretrainStageConfig",
        task="train.lavit.encoder_pretrain:EncoderPretrainTask",
        summary="mini-world stand-in for EVA-CLIP: contrastive pre-training of the tokenizer's ViT",
        produces="ViT weights (keys encoder.*, as the tokenizer's), loaded by stage 1a's encoder_path",
    ),
    StageSpec(
        name="llm_pretrain",
        family="lavit",
        config=f"{_CONFIG}:LlmPretrainStageConfig",
        task="train.lavit.llm_pretrain:LlmPretrainTask",
        summary="mini-world stand-in for LLaMA: causal-LM pre-training of the text-only LLM",
        produces="LlamaForCausalLM weights (keys language_model.*), loaded by stage 2's llm_path",
    ),
    StageSpec(
        name="tokenizer",
        family="lavit",
        config=f"{_CONFIG}:TokenizerStageConfig",
        task="train.lavit.tokenizer:TokenizerTask",
        summary="stage 1a: the dynamic visual tokenizer (Eq. 4)",
        upstream={"encoder_path": "encoder_pretrain"},
        produces="visual tokenizer weights (keys tokenizer.*)",
    ),
    StageSpec(
        name="pixel_decoder",
        family="lavit",
        config=f"{_CONFIG}:PixelDecoderStageConfig",
        task="train.lavit.pixel_decoder:PixelDecoderTask",
        summary="stage 1b: the conditional U-Net pixel decoder (Eq. 5)",
        upstream={"tokenizer_checkpoint": "tokenizer"},
        produces="pixel decoder weights (keys pixel_decoder.unet.*)",
    ),
    StageSpec(
        name="unified",
        family="lavit",
        config=f"{_CONFIG}:UnifiedStageConfig",
        task="train.lavit.unified:UnifiedTask",
        summary="stage 2: unified vision-language pre-training of the LLM (Eq. 6)",
        upstream={"tokenizer_checkpoint": "tokenizer", "llm_path": "llm_pretrain"},
        produces="LaVIT without its frozen tokenizer (keys lavit.*); evaluable with python -m eval",
    ),
)
