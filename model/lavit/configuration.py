"""Configuration of the whole LaVIT model (paper §3.2-3.3, App. A), with named presets.

A `LavitConfig` nests the visual tokenizer's config (`tokenizer_config.py`, owned by the tokenizer) with the LLM,
the pixel decoder and the ablation switches of Tables 3/6/7/8. It describes the model only: decoding settings
(beams, lengths, top-k, CFG scale, ...) belong to the evaluation protocols and live in the evaluation tasks
(`eval/tasks.py`), which pass them to `model.lavit.eval_adapter.LavitEvalAdapter`.

Presets (group ``"lavit"``):

- ``lavit-7b``     — the paper/released model: EVA-CLIP ViT-g/14 tokenizer (K = 16384), LLaMA-7B with the
  48386-entry vocabulary, SD-1.5-sized pixel decoder (UNet cross-attending to the 768-d decoder context).
- ``lavit-clip-l`` — the ablation model of §4.3 / App. B.2: CLIP ViT-L/14 tokenizer, otherwise as ``lavit-7b``.
- ``lavit-tiny``   — the same classes at CPU size (tests, benchmarks).

Ablation switches: the tokenizer-side ones (fixed length, bidirectional merger, no merger) live in
`tokenizer.fixed_length`, `tokenizer.merger_attention`, `tokenizer.use_merger`; the LLM-side ones in `ablation`.

This module imports nothing heavy (no torch), so `--help` of every CLI stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.config import register_preset
from model.lavit.tokenizer_config import VisualTokenizerConfig
from model.lavit.tokenizer_config import clip_l as tokenizer_clip_l
from model.lavit.tokenizer_config import paper as tokenizer_paper
from model.lavit.tokenizer_config import tiny as tokenizer_tiny

PRESET_GROUP = "lavit"


@dataclass
class LlmConfig:
    """The LLaMA decoder (transformers `LlamaForCausalLM`) with LaVIT's extended vocabulary."""

    hidden_size: int = 4096  # model width (LLaMA-7B: 4096)
    num_layers: int = 32  # decoder blocks
    num_heads: int = 32  # attention heads
    num_kv_heads: int = 32  # key/value heads (LLaMA-1: no grouped-query attention)
    intermediate_size: int = 11008  # SwiGLU hidden size
    text_vocab_size: int = 32000  # LLaMA's SentencePiece vocabulary: ids 0..31999
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon (LLaMA-1: 1e-6)
    max_position_embeddings: int = 2048  # context length used in pre-training (Table 9: 2048)
    rope_theta: float = 10000.0  # rotary base
    tie_word_embeddings: bool = False  # LLaMA keeps a separate LM head
    bos_token_id: int = 1  # <s>
    eos_token_id: int = 2  # </s>; also the left-padding token of the released code
    unk_token_id: int = 0  # <unk>
    initializer_range: float = 0.02  # std of freshly initialised weights
    attn_implementation: str = "sdpa"  # transformers attention backend ("eager" is the plain reference)


@dataclass
class PixelDecoderConfig:
    """Conditional denoising U-Net (Eq. 5) + AutoencoderKL; shapes follow Stable Diffusion 1.5 by default."""

    enabled: bool = True  # build the pixel decoder (False: tokens -> features only, e.g. understanding-only runs)
    image_size: int = 512  # output resolution in pixels (released `lowres` decoder: 512)
    # Where the U-Net denoises: "vae" = the latents of a (Stable Diffusion) AutoencoderKL, as the paper does;
    # "pixels" = the image itself (3 channels, no autoencoder). The paper's VAE is a downloaded, pretrained part; a
    # randomly initialised frozen VAE does not reconstruct images, so the mini world's decoder, which has no such
    # download, diffuses in pixel space instead (a stand-in, like encoder_pretrain for EVA-CLIP).
    latent_space: Literal["vae", "pixels"] = "vae"
    # --- UNet2DConditionModel -----------------------------------------------------------------------------------
    unet_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # channels per resolution level
    unet_down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )  # diffusers block class names, coarsest last
    unet_up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )  # diffusers block class names, coarsest first
    unet_layers_per_block: int = 2  # ResNet(+attention) layers per block
    unet_attention_head_dim: int = 8  # SD-1.5 names the head *count* 8 here (a diffusers naming quirk)
    unet_norm_num_groups: int = 32  # GroupNorm groups
    # --- AutoencoderKL ------------------------------------------------------------------------------------------
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # 4 levels -> 8x spatial downsampling
    vae_layers_per_block: int = 2  # ResNet layers per VAE block
    vae_latent_channels: int = 4  # latent channels z
    vae_norm_num_groups: int = 32  # GroupNorm groups
    vae_scaling_factor: float = 0.18215  # SD-1.x latent scaling
    # --- noise schedule (DDPM for training, DDIM for sampling; SD-1.5 values) -----------------------------------
    num_train_timesteps: int = 1000  # diffusion steps T
    beta_start: float = 0.00085  # first beta of the scaled-linear schedule
    beta_end: float = 0.012  # last beta
    beta_schedule: str = "scaled_linear"  # diffusers schedule name
    # --- conditioning -------------------------------------------------------------------------------------------
    uncond_length: int = 77  # rows of `uncond_embeddings` (released: SD's empty-prompt embedding, 77 x 768)
    condition_dropout: float = 0.1  # training: probability of replacing the context by the unconditional one (CFG)
    num_inference_steps: int = 50  # DDIM steps at sampling time
    guidance_scale: float = 5.0  # CFG on the noise (released `pixel_decoding_origin` default: 5.0)
    init_from: str = ""  # optional local Stable Diffusion 1.5 folder (unet/, vae/, scheduler/) to initialise from


@dataclass
class AblationConfig:
    """LLM-side ablations (tokenizer-side ones are in `VisualTokenizerConfig`)."""

    visual_objective: Literal["classification", "regression"] = "classification"  # Table 3a
    regression_loss: Literal["mse", "cosine"] = "mse"  # Table 3a "Regression": loss on the next visual embedding
    understanding_input: Literal["continuous", "quantized"] = "continuous"  # Table 7a
    freeze_llm: bool = False  # Table 7b "Frozen LLM": only the (understanding) merger + vit_proj train
    supervise_image_tokens_in_understanding: bool = True  # App. B.2: [image; text] visual slots predict their codes


@dataclass
class LavitConfig:
    tokenizer: VisualTokenizerConfig = field(default_factory=VisualTokenizerConfig)  # stage-1 visual tokenizer
    llm: LlmConfig = field(default_factory=LlmConfig)  # stage-2 language model
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)  # codes -> pixels
    ablation: AblationConfig = field(default_factory=AblationConfig)  # Tables 3a / 7a / 7b switches

    def validate(self) -> None:
        """Cross-component consistency; raises naming both fields and their values. Called when a model is
        built (not in __post_init__, so that two `--set` overrides may change coupled fields one at a time)."""
        if self.tokenizer.llm_hidden_size != self.llm.hidden_size:
            raise ValueError(
                f"tokenizer.llm_hidden_size={self.tokenizer.llm_hidden_size} != llm.hidden_size={self.llm.hidden_size}:"
                " vit_proj must map the merger output into the LLM's input space"
            )
        if self.llm.hidden_size % self.llm.num_heads:
            raise ValueError(
                f"llm.hidden_size={self.llm.hidden_size} is not divisible by llm.num_heads={self.llm.num_heads}"
            )
        ids = (self.llm.bos_token_id, self.llm.eos_token_id, self.llm.unk_token_id)
        if max(ids) >= self.llm.text_vocab_size:
            raise ValueError(f"special text ids {ids} must lie below llm.text_vocab_size={self.llm.text_vocab_size}")
        pd = self.pixel_decoder
        if len(pd.unet_down_block_types) != len(pd.unet_block_out_channels) or len(pd.unet_up_block_types) != len(
            pd.unet_block_out_channels
        ):
            raise ValueError(
                f"pixel_decoder: {len(pd.unet_block_out_channels)} unet_block_out_channels but "
                f"{len(pd.unet_down_block_types)} down / {len(pd.unet_up_block_types)} up block types"
            )
        if pd.image_size % self.vae_scale_factor:
            raise ValueError(
                f"pixel_decoder.image_size={pd.image_size} is not a multiple of the VAE factor {self.vae_scale_factor}"
            )
        if self.ablation.visual_objective == "regression" and self.ablation.understanding_input == "quantized":
            raise ValueError(
                "ablation.visual_objective='regression' has no discrete visual inputs; "
                "use understanding_input='continuous'"
            )
        if self.ablation.freeze_llm and self.ablation.understanding_input == "quantized":
            raise ValueError(
                "ablation.freeze_llm=true with ablation.understanding_input='quantized' leaves nothing to train: Table 7b"
                " trains only the understanding merger + vit_proj, which quantized inputs bypass"
            )

    @property
    def vocab_size(self) -> int:
        """Text ids, [IMG], [/IMG], then one id per visual code (paper: 32000 + 2 + 16384 = 48386)."""
        return self.llm.text_vocab_size + 2 + self.tokenizer.codebook_size

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side (SD: 8; 1 when the decoder diffuses in pixel space)."""
        if self.pixel_decoder.latent_space == "pixels":
            return 1
        return 2 ** (len(self.pixel_decoder.vae_block_out_channels) - 1)


@register_preset(PRESET_GROUP, "lavit-7b")
def lavit_7b() -> LavitConfig:
    """The released LaVIT: EVA-CLIP ViT-g/14 tokenizer (K=16384) + LLaMA-7B + SD-1.5-shaped pixel decoder."""
    return LavitConfig(tokenizer=tokenizer_paper())


@register_preset(PRESET_GROUP, "lavit-clip-l")
def lavit_clip_l() -> LavitConfig:
    """§4.3 ablation model: CLIP ViT-L/14 tokenizer, LLaMA-7B."""
    return LavitConfig(tokenizer=tokenizer_clip_l())


@register_preset(PRESET_GROUP, "lavit-tiny")
def lavit_tiny() -> LavitConfig:
    """CPU size, same classes: 2-layer 64-wide LLaMA, tiny UNet/VAE at 32 px. The text vocabulary keeps
    LLaMA's 32000 ids so the id layout ([IMG]=32000, code k -> 32002+k) is the real one."""
    tokenizer = tokenizer_tiny()
    return LavitConfig(
        tokenizer=tokenizer,
        llm=LlmConfig(
            hidden_size=tokenizer.llm_hidden_size,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
        ),
        pixel_decoder=PixelDecoderConfig(
            image_size=32,
            unet_block_out_channels=(32, 64),
            unet_down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            unet_up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            unet_layers_per_block=1,
            unet_attention_head_dim=8,
            unet_norm_num_groups=8,
            vae_block_out_channels=(16, 32),
            vae_layers_per_block=1,
            vae_norm_num_groups=8,
            uncond_length=8,
            num_inference_steps=4,
        ),
    )
