"""Configuration of LaVIT's dynamic visual tokenizer (paper §3.1), with named presets.

Presets (group ``"lavit_tokenizer"``):

- ``paper``  — the released tokenizer: EVA-CLIP ViT-g/14 encoder (224 px, 256 patches, width 1408, depth 40),
  12-block token merger, 16384 x 32 codebook, 12-block decoder, ``vit_proj`` to LLaMA-7B's 4096.
- ``clip-l`` — the paper's ablation encoder (§4.3, App. B.2): CLIP ViT-L/14 (width 1024, depth 24) through
  transformers' ``CLIPVisionModel``. The ablation tokenizer was not released; its merger/decoder sizes here follow
  the released ones scaled to width 1024.
- ``tiny``   — the same classes at CPU size (56 px / patch 14 -> 16 patches, width 32) for tests.

This module imports nothing heavy: the model classes live in ``tokenizer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.config import register_preset

PRESET_GROUP = "lavit_tokenizer"


@dataclass
class VisualTokenizerConfig:
    # --- visual encoder (frozen) -------------------------------------------------------------------------------
    encoder: Literal["eva_vit_g", "clip_vit_l"] = "eva_vit_g"  # which ViT produces the patch features X
    encoder_path: str = ""  # clip_vit_l only: local CLIPVisionModel folder (config.json + weights); "" = random init
    image_size: int = 224  # input resolution (square); images are resized to it without cropping
    patch_size: int = 14  # ViT patch size P; N = (image_size / P)^2 patches
    encoder_width: int = 1408  # ViT hidden size D (EVA-CLIP ViT-g: 1408)
    encoder_depth: int = 40  # number of ViT blocks
    encoder_heads: int = 16  # ViT attention heads (EVA-g: 1408 / 88)
    encoder_mlp: int = 6144  # ViT MLP hidden size (EVA-g: int(1408 * 4.3637))
    encoder_ln_eps: float = 1e-6  # LayerNorm epsilon inside the ViT (EVA: 1e-6, CLIP: 1e-5)
    encoder_head_dim: int = 1024  # EVA's unused CLIP projection `head` (present in the checkpoint, never applied)
    freeze_encoder: bool = True  # the paper keeps the ViT frozen; its forward then runs under no_grad
    # --- token selector (`token_predictor`) ---------------------------------------------------------------------
    selector_ln_eps: float = 1e-5  # LayerNorm epsilon of the selector's input norm
    gumbel_tau: float = 1.0  # Gumbel-softmax temperature tau of Eq. 1 (released code: default 1)
    # --- token merger (`causal_encoder`) ------------------------------------------------------------------------
    merger_depth: int = 12  # L stacked merger blocks
    merger_heads: int = 16  # attention heads in the merger's causal self- and cross-attention
    merger_mlp: int = 6144  # merger MLP hidden size (int(1408 * 4.3637))
    merger_ln_eps: float = 1e-5  # LayerNorm epsilon in the merger (norm0/1/2, ln_vision, norm)
    attention_eps: float = 1e-6  # masked-softmax epsilon: masked keys keep eps/N weight (released); 0 = exact masking
    # (then a row with nothing to attend, e.g. the cross-attention when every patch is kept, is 0/0 = NaN)
    # --- quantizer ----------------------------------------------------------------------------------------------
    codebook_size: int = 16384  # K visual codes
    code_dim: int = 32  # dimension of a (L2-normalised) code vector
    codebook_ema_decay: float = 0.99  # EMA decay of the codebook update in training mode
    codebook_use_ema: bool = True  # update the codebook by EMA (not by gradients), as the authors state
    commitment_weight: float = 1.0  # beta of the commitment term ||l2(z) - sg(q)||^2 (VQ-KD recipe; not in Eq. 4)
    # --- decoder (`VQDecoder`) ----------------------------------------------------------------------------------
    decoder_width: int = 1408  # decoder hidden size
    decoder_depth: int = 12  # decoder blocks
    decoder_heads: int = 16  # decoder attention heads
    decoder_mlp: int = 6144  # decoder MLP hidden size
    decoder_ln_eps: float = 1e-5  # LayerNorm epsilon in the decoder
    unet_context_dim: int = 768  # `unet_proj` output: cross-attention context width of the pixel decoder (SD-1.x)
    # --- LLM interface ------------------------------------------------------------------------------------------
    llm_hidden_size: int = 4096  # `vit_proj` output width (LLaMA-7B hidden size)
    # --- training objective (Eq. 4) -----------------------------------------------------------------------------
    keep_ratio: float = 1.0 / 3.0  # rho: target mean fraction of kept patches
    ratio_loss_weight: float = 2.0  # lambda in Eq. 4
    init_std: float = 0.02  # std of the truncated-normal init of freshly built (not loaded) weights
    # --- ablation switches --------------------------------------------------------------------------------------
    fixed_length: bool = False  # Table 3b "Fixed": no selector, all N patches become tokens
    merger_attention: Literal["causal", "bidirectional"] = "causal"  # Table 6: self-attention scope in the merger
    use_merger: bool = True  # Table 8: False = drop unselected patches without merging (no merger blocks)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in (
            ("encoder_width", "encoder_heads"),
            ("encoder_width", "merger_heads"),
            ("decoder_width", "decoder_heads"),
        ):
            width, heads = getattr(self, name[0]), getattr(self, name[1])
            if width % heads:
                raise ValueError(f"{name[0]}={width} is not divisible by {name[1]}={heads}")
        if self.encoder_width % 2:
            raise ValueError(f"encoder_width={self.encoder_width} must be even (the selector splits channels in half)")
        if self.attention_eps < 0:
            raise ValueError(f"attention_eps must be >= 0, got {self.attention_eps}")
        if not 0.0 <= self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in [0, 1], got {self.keep_ratio}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N, the number of patch features (CLS excluded)."""
        return self.grid_size**2


@register_preset(PRESET_GROUP, "paper")
def paper() -> VisualTokenizerConfig:
    """The released LaVIT tokenizer (EVA-CLIP ViT-g/14, K=16384, L=12)."""
    return VisualTokenizerConfig()


@register_preset(PRESET_GROUP, "clip-l")
def clip_l() -> VisualTokenizerConfig:
    """The ablation encoder of §4.3: CLIP ViT-L/14 (width 1024, depth 24, 16 heads, MLP 4096, LN eps 1e-5)."""
    return VisualTokenizerConfig(
        encoder="clip_vit_l",
        encoder_width=1024,
        encoder_depth=24,
        encoder_heads=16,
        encoder_mlp=4096,
        encoder_ln_eps=1e-5,
        encoder_head_dim=768,
        merger_mlp=4096,
        decoder_width=1024,
        decoder_mlp=4096,
    )


@register_preset(PRESET_GROUP, "tiny")
def tiny() -> VisualTokenizerConfig:
    """CPU-size tokenizer with the same classes: 56 px / patch 14 -> N=16, width 32."""
    return VisualTokenizerConfig(
        image_size=56,
        patch_size=14,
        encoder_width=32,
        encoder_depth=2,
        encoder_heads=2,
        encoder_mlp=64,
        encoder_head_dim=16,
        merger_depth=2,
        merger_heads=2,
        merger_mlp=64,
        codebook_size=64,
        code_dim=8,
        decoder_width=32,
        decoder_depth=2,
        decoder_heads=2,
        decoder_mlp=64,
        unet_context_dim=32,
        llm_hidden_size=64,
    )
