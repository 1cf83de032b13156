"""LaVIT's training stages: configs and `paper` / `mini` presets (paper §3.3, Table 9).

    tokenizer       stage 1a: dynamic visual tokenizer (Eq. 4)           group "train/tokenizer"
    pixel_decoder   stage 1b: conditional U-Net on x_rec (Eq. 5)         group "train/pixel_decoder"
    unified         stage 2: LLM on [image; text], [text; image], text   group "train/unified"
    encoder_pretrain, llm_pretrain   mini-world stand-ins for the released EVA-CLIP and LLaMA (end of this file)

`paper` is Table 9 verbatim where the paper states a value; every value it does not state is marked
"not in the paper" with the reason for the choice. `mini` is the same stage at CPU size (tiny model presets,
synthetic data written on first use, a few steps), for tests and smoke runs.

Stages 1b and 2 start from a stage-1a run named by `tokenizer_checkpoint` in every preset, `mini` included, and
refuse to start without it; `tokenizer_checkpoint="random-init"` is the explicit opt-in to a random tokenizer.

A run's config.yaml is read by the evaluation loader too, as plain data: `model`, `tokenizer_checkpoint`,
`text_tokenizer` and `stable_diffusion_path` keep those names and meanings (`model/lavit/checkpoints.py`, RUN_KEYS).

No torch import here: `python -m train --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.config import register_preset
from model.lavit.configuration import LavitConfig, lavit_7b, lavit_tiny
from model.lavit.tokenizer_config import VisualTokenizerConfig
from model.lavit.tokenizer_config import paper as tokenizer_paper
from model.lavit.tokenizer_config import tiny as tokenizer_tiny
from train.config import DistConfig, ImageTextDataConfig, LoopConfig, OptimConfig, SyntheticDataConfig, preset_group


# ---------------------------------------------------------------------------------------------
# Stage 1a: the dynamic visual tokenizer.


@dataclass
class TokenizerStageConfig:
    tokenizer: VisualTokenizerConfig = field(default_factory=tokenizer_paper)  # model (rho, lambda live here)
    data: ImageTextDataConfig = field(default_factory=ImageTextDataConfig)  # images (captions unused)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)  # mini runs only
    optim: OptimConfig = field(default_factory=OptimConfig)  # Table 9, "Tokenizer training" column
    loop: LoopConfig = field(default_factory=LoopConfig)  # steps, batch, checkpoints
    dist: DistConfig = field(default_factory=DistConfig)  # parallelism and precision
    vq_start_step: int = 10_000  # steps of selector+merger training before quantization (not in the paper; authors' recipe)
    kmeans_images: int = 2048  # images whose part features initialise the codebook by k-means at vq_start_step
    kmeans_iters: int = 10  # k-means iterations
    encoder_path: str = ""  # EVA-CLIP weights (.safetensors / .bin) or an encoder_pretrain run (dir); "" = random init
    init_from: str = ""  # a tokenizer checkpoint directory or .safetensors to start from (weights only)


# ---------------------------------------------------------------------------------------------
# Stage 1b: the pixel decoder.


@dataclass
class PixelDecoderStageConfig:
    model: LavitConfig = field(default_factory=lavit_7b)  # tokenizer + pixel decoder shapes
    tokenizer_checkpoint: str = ""  # stage-1a run / checkpoint dir / .safetensors (required); "random-init": random weights (tests)
    stable_diffusion_path: str = ""  # local Stable Diffusion 1.5 folder (unet/, vae/) to initialise the U-Net and VAE
    data: ImageTextDataConfig = field(default_factory=ImageTextDataConfig)  # images (captions unused)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------------------------------------
# Stage 2: unified pre-training.

# Table 5: sampling proportions of the RedPajama subsets in the text part.
REDPAJAMA_PROPORTIONS = {"c4": 0.80, "github": 0.04, "wikipedia": 0.04, "books": 0.04, "arxiv": 0.04, "stackexchange": 0.04}


@dataclass
class UnifiedDataConfig:
    understanding_shards: list[str] = field(default_factory=list)  # [image; text] pairs (CC3M/12M, SBU, BLIP-CapFilt)
    generation_shards: list[str] = field(default_factory=list)  # [text; image] pairs (LAION-Aesthetics)
    understanding_weight: float = 0.5  # share of [image; text] among image-text samples (not in the paper: 1:1)
    text_sources: dict[str, list[str]] = field(default_factory=dict)  # RedPajama subset name -> JSONL globs
    text_weights: dict[str, float] = field(default_factory=lambda: dict(REDPAJAMA_PROPORTIONS))  # Table 5
    text_key: str = "text"  # JSON field holding a document
    text_to_image_text: tuple[float, float] = (2.0, 1.0)  # App. B.1: text : image-text = 2 : 1
    partition: Literal["sample", "shard", "sequence"] = "sample"  # how ranks split the data (train/data.py, unified.py)
    codes_cache: str = ""  # directory of pre-tokenised codes (written by `train.lavit.unified.cache_codes`); "" = tokenize on the fly
    # Keep only image-text samples whose KEY.json has these values (e.g. {"kind": "caption"}: LaVIT's [image; text]
    # data are captions); empty = every sample. Skipped samples are counted in the stream's skipped_map.
    image_text_filter: dict[str, str] = field(default_factory=dict)


@dataclass
class UnifiedStageConfig:
    model: LavitConfig = field(default_factory=lavit_7b)  # tokenizer + LLM (+ pixel decoder, unused here)
    tokenizer_checkpoint: str = ""  # stage-1a run / checkpoint dir / .safetensors (required); "random-init": random weights (tests)
    llm_path: str = ""  # local LLaMA-7B folder (transformers format) or an llm_pretrain run for the LLM init; "" = random
    visual_selection: Literal["sampled", "deterministic"] = "sampled"  # keep mask M: released Gumbel sampling, or argmax
    text_tokenizer: str = "byte"  # "byte" (the model's byte-level tokenizer) or a local HF tokenizer folder (LLaMA)
    seq_len: int = 2048  # Table 9: input sequence length to the LLM; sequences are packed to exactly this length
    data: UnifiedDataConfig = field(default_factory=UnifiedDataConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------------------------------------
# Presets.


@register_preset(preset_group("tokenizer"), "paper")
def tokenizer_paper_preset() -> TokenizerStageConfig:
    """Table 9, tokenizer column: AdamW (0.9, 0.99, 1e-6), LR 2e-4 cosine, 4k warm-up, wd 0.01, 50k x 2048, bf16."""
    return TokenizerStageConfig(
        tokenizer=tokenizer_paper(),
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, warmup_steps=4000, grad_clip=1.0),
        loop=LoopConfig(steps=50_000, global_batch_size=2048, micro_batch_size=32, checkpoint_every=1000),
        dist=DistConfig(strategy="auto", precision="bf16", activation_checkpointing=True),
        vq_start_step=10_000,
    )


@register_preset(preset_group("tokenizer"), "mini")
def tokenizer_mini_preset() -> TokenizerStageConfig:
    """Same stage at CPU size: tiny tokenizer, synthetic images, 8 steps of 4 images, VQ from step 4."""
    return TokenizerStageConfig(
        tokenizer=tokenizer_tiny(),
        synthetic=SyntheticDataConfig(enabled=True),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, warmup_steps=2, grad_clip=1.0),
        loop=LoopConfig(steps=8, global_batch_size=4, micro_batch_size=2, checkpoint_every=2, progress=False),
        dist=DistConfig(strategy="auto", device="cpu", precision="fp32"),
        vq_start_step=4,
        kmeans_images=8,
        kmeans_iters=4,
    )


@register_preset(preset_group("pixel_decoder"), "paper")
def pixel_decoder_paper_preset() -> PixelDecoderStageConfig:
    """§3.3: U-Net from SD-1.5 fine-tuned 20k steps at batch 2048 on the tokenizer's x_rec. Table 9 gives no
    optimizer row for this stage; the values are Stable Diffusion fine-tuning defaults (not in the paper)."""
    return PixelDecoderStageConfig(
        model=lavit_7b(),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, warmup_steps=1000, grad_clip=1.0),
        loop=LoopConfig(steps=20_000, global_batch_size=2048, micro_batch_size=16, checkpoint_every=1000),
        dist=DistConfig(strategy="auto", precision="bf16", activation_checkpointing=True),
    )


@register_preset(preset_group("pixel_decoder"), "mini")
def pixel_decoder_mini_preset() -> PixelDecoderStageConfig:
    return PixelDecoderStageConfig(
        model=lavit_tiny(),
        synthetic=SyntheticDataConfig(enabled=True),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, warmup_steps=2, grad_clip=1.0),
        loop=LoopConfig(steps=6, global_batch_size=4, micro_batch_size=2, checkpoint_every=2, progress=False),
        dist=DistConfig(strategy="auto", device="cpu", precision="fp32"),
    )


@register_preset(preset_group("unified"), "paper")
def unified_paper_preset() -> UnifiedStageConfig:
    """Table 9, VL pre-training column: AdamW (0.9, 0.95, 1e-6), LR 5e-5 (LLM) / 1.5e-4 (visual), cosine, 2k warm-up,
    wd 0.1, clip 1.0, 20k steps x 2048 sequences of 2048 tokens, bf16; text : image-text = 2 : 1, Table 5 mix."""
    return UnifiedStageConfig(
        model=lavit_7b(),
        seq_len=2048,
        optim=OptimConfig(
            lr=1.5e-4, group_lr={"llm": 5e-5}, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, warmup_steps=2000, grad_clip=1.0
        ),
        loop=LoopConfig(steps=20_000, global_batch_size=2048, micro_batch_size=4, checkpoint_every=500),
        dist=DistConfig(strategy="fsdp", precision="bf16", activation_checkpointing=True),
    )


@register_preset(preset_group("unified"), "mini")
def unified_mini_preset() -> UnifiedStageConfig:
    """Same stage at CPU size: tiny LaVIT, byte tokenizer, synthetic pairs and text, 96-token packed sequences."""
    model = lavit_tiny()
    model.pixel_decoder.enabled = False  # not used in stage 2; saves building the U-Net
    # The byte-level text tokenizer uses ids < 259: a 320-id text vocabulary keeps the LM head CPU-sized
    # ([IMG] = 320, code k -> 322 + k; the layout rule is the paper's, only the text vocabulary is smaller).
    model.llm.text_vocab_size = 320
    return UnifiedStageConfig(
        model=model,
        seq_len=96,
        data=UnifiedDataConfig(text_weights={"c4": 0.8, "wikipedia": 0.2}),
        synthetic=SyntheticDataConfig(enabled=True, num_shards=2, samples_per_shard=16, text_docs=32),
        optim=OptimConfig(
            lr=1e-3, group_lr={"llm": 5e-4}, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, warmup_steps=2, grad_clip=1.0
        ),
        loop=LoopConfig(steps=6, global_batch_size=4, micro_batch_size=2, checkpoint_every=2, progress=False),
        dist=DistConfig(strategy="auto", device="cpu", precision="fp32"),
    )


# ---------------------------------------------------------------------------------------------
# Mini-world stand-ins for the pretrained parts the paper starts from (not stages of the paper):
#
#     encoder_pretrain   CLIP-style contrastive training of the tokenizer's ViT   group "train/encoder_pretrain"
#                        (stands in for EVA-CLIP ViT-g; feeds stage 1a through `encoder_path`)
#     llm_pretrain       causal-LM pre-training of the text-only LLaMA            group "train/llm_pretrain"
#                        (stands in for LLaMA-7B; feeds stage 2 through `llm_path`)
#
# Their `paper` presets hold the paper-scale shapes but set `released_stand_in=True`: the paper trains neither
# part, it downloads them, so running the preset stops at once with a one-line error that names the downstream
# key taking the released weights. `--set released_stand_in=false` runs it anyway (a from-scratch pre-training).


@dataclass
class TextEncoderConfig:
    """The small caption encoder of `encoder_pretrain` (byte-level ids, 259 of them; ours, not EVA-CLIP's)."""

    width: int = 64  # embedding / transformer width
    depth: int = 1  # pre-norm transformer layers (0 = masked mean of the embeddings only)
    heads: int = 2  # attention heads
    mlp: int = 128  # feed-forward hidden size
    max_len: int = 64  # caption bytes kept (longer captions are cut)


@dataclass
class EncoderPretrainDataConfig:
    shards: list[str] = field(default_factory=list)  # glob patterns of image-text tar shards; given ones win over synthetic
    partition: Literal["sample", "shard"] = "sample"  # how ranks split the stream (train/data.py)
    # Keep only samples whose KEY.json has these values (e.g. {"kind": "caption"}: pairs whose text describes the
    # image, not question-answer texts); empty = every sample.
    meta_filter: dict[str, str] = field(default_factory=dict)
    # KEY.json keys whose equal values make two pairs positives of each other (UniCL's label-aware contrastive loss,
    # encoder_pretrain.py); empty = plain CLIP (each pair's only positive is itself).
    positive_keys: list[str] = field(default_factory=list)


@dataclass
class EncoderPretrainStageConfig:
    tokenizer: VisualTokenizerConfig = field(default_factory=tokenizer_paper)  # encoder_* fields: the ViT trained here
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    init_temperature: float = 0.07  # softmax temperature at step 0 (CLIP's init); learned as log(1 / T)
    max_logit_scale: float = 100.0  # 1 / T is clamped to at most this (CLIP's cap)
    released_stand_in: bool = False  # True: refuse to run (the paper uses released EVA-CLIP weights instead)
    data: EncoderPretrainDataConfig = field(default_factory=EncoderPretrainDataConfig)  # images + captions
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)  # mini runs only
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)  # negatives = the other pairs of the micro-batch
    dist: DistConfig = field(default_factory=DistConfig)


@dataclass
class LlmPretrainDataConfig:
    text_sources: dict[str, list[str]] = field(default_factory=dict)  # source name -> JSONL globs; given ones win over synthetic
    text_weights: dict[str, float] = field(default_factory=lambda: dict(REDPAJAMA_PROPORTIONS))  # sampling shares (> 0: used)
    text_key: str = "text"  # JSON field holding a document
    partition: Literal["sample", "shard"] = "sample"  # how ranks split each source (train/data.py)


@dataclass
class LlmPretrainStageConfig:
    model: LavitConfig = field(default_factory=lavit_7b)  # only `llm` is used; the LM has llm.text_vocab_size rows
    text_tokenizer: str = "byte"  # "byte" (the model's byte-level tokenizer) or a local HF tokenizer folder
    seq_len: int = 2048  # packed sequence length (documents never attend across a boundary)
    released_stand_in: bool = False  # True: refuse to run (the paper uses released LLaMA-7B weights instead)
    data: LlmPretrainDataConfig = field(default_factory=LlmPretrainDataConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)  # mini runs only
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def _mini_llm() -> LavitConfig:
    """The LLM shapes of the `unified` mini preset (hidden 64, 2 layers, 320 text ids), so the weights carry over."""
    return unified_mini_preset().model


@register_preset(preset_group("encoder_pretrain"), "paper")
def encoder_pretrain_paper_preset() -> EncoderPretrainStageConfig:
    """Stand-in only: the paper uses the released EVA-CLIP ViT-g/14 (pass it to stage 1a as encoder_path). The
    shapes are ViT-g's; the optimizer values are generic CLIP-style ones (not in the paper, not EVA-CLIP's recipe)."""
    return EncoderPretrainStageConfig(
        tokenizer=tokenizer_paper(),
        text_encoder=TextEncoderConfig(width=768, depth=12, heads=12, mlp=3072, max_len=77),
        released_stand_in=True,
        optim=OptimConfig(lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, warmup_steps=2000, grad_clip=1.0),
        loop=LoopConfig(steps=100_000, global_batch_size=32_768, micro_batch_size=256, checkpoint_every=1000),
        dist=DistConfig(strategy="auto", precision="bf16", activation_checkpointing=True),
    )


@register_preset(preset_group("encoder_pretrain"), "mini")
def encoder_pretrain_mini_preset() -> EncoderPretrainStageConfig:
    """CPU size: the tiny tokenizer's ViT (56 px, 16 patches, width 32) against a 1-layer byte caption encoder,
    synthetic shape images, 40 steps of 16 pairs (no accumulation: the micro-batch is the contrastive batch)."""
    return EncoderPretrainStageConfig(
        tokenizer=tokenizer_tiny(),
        text_encoder=TextEncoderConfig(width=64, depth=1, heads=2, mlp=128, max_len=64),
        synthetic=SyntheticDataConfig(enabled=True, num_shards=2, samples_per_shard=64),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05, warmup_steps=4, grad_clip=1.0),
        loop=LoopConfig(steps=40, global_batch_size=16, micro_batch_size=16, checkpoint_every=20, progress=False),
        dist=DistConfig(strategy="auto", device="cpu", precision="fp32"),
    )


@register_preset(preset_group("llm_pretrain"), "paper")
def llm_pretrain_paper_preset() -> LlmPretrainStageConfig:
    """Stand-in only: the paper starts from the released LLaMA-7B (pass its folder to stage 2 as llm_path). Shapes
    are LLaMA-7B's; the optimizer follows the LLaMA paper (AdamW 0.9/0.95, 3e-4, cosine to 10%, wd 0.1, clip 1.0,
    2k warm-up, 4M-token batches of 2048-token sequences, 1T tokens = 250k steps)."""
    return LlmPretrainStageConfig(
        model=lavit_7b(),
        seq_len=2048,
        released_stand_in=True,
        optim=OptimConfig(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, warmup_steps=2000, min_lr_ratio=0.1, grad_clip=1.0),
        loop=LoopConfig(steps=250_000, global_batch_size=2048, micro_batch_size=4, checkpoint_every=1000),
        dist=DistConfig(strategy="fsdp", precision="bf16", activation_checkpointing=True),
    )


@register_preset(preset_group("llm_pretrain"), "mini")
def llm_pretrain_mini_preset() -> LlmPretrainStageConfig:
    """CPU size: the `unified` mini preset's LLM (64 wide, 2 layers, 320 text ids), byte tokenizer, synthetic
    text in the same two sources, 40 steps of 8 packed 128-token sequences."""
    return LlmPretrainStageConfig(
        model=_mini_llm(),
        seq_len=128,
        data=LlmPretrainDataConfig(text_weights={"c4": 0.8, "wikipedia": 0.2}),
        synthetic=SyntheticDataConfig(enabled=True, text_docs=64),
        optim=OptimConfig(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, warmup_steps=4, grad_clip=1.0),
        loop=LoopConfig(steps=40, global_batch_size=8, micro_batch_size=8, checkpoint_every=20, progress=False),
        dist=DistConfig(strategy="auto", device="cpu", precision="fp32"),
    )
