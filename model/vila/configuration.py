"""Configuration of the VILA model (paper §2-§3, Fig. 2), with named presets.

VILA is an auto-regressive VLM: a CLIP ViT (`vision`) whose second-to-last-layer patch features go through a
projector (`projector`) into the input space of a LLaMA LLM (`llm`); an `<image>` placeholder in the text is replaced
by its image's projected features. `ablation` holds the model-side switches of the paper's ablations:

    Table 1      projector.type = "transformer" (settings a-c) or "linear" (d); LLM frozen or trained is a
                 stage-level choice (`VilaForCausalLM.set_trainable(stage, train_llm=...)`)
    Table 7      vision.image_size = 224 / 336, projector.type = "downsample_2x2"
    Table 8      ablation.visual_expert: frozen LLM + a trainable copy of its weights at visual-token positions
    Table 9      ablation.lora_rank = 64: LoRA on the LLM (peft) instead of full fine-tuning

Presets (group ``"vila"``):

- ``vila-7b``   — the paper's model: CLIP ViT-L/14 at 336 px + `mlp2x_gelu` projector + Llama-2-7B.
- ``vila-13b``  — the same with Llama-2-13B.
- ``vila-mini`` — CPU size for the mini world (harness/miniworld.py): 64-px images seen at 48 px (the 336-px
  analogue; 32 px is the 224-px one), the mini world's byte-level BPE text tokenizer (512 ids, LLaMA's special ids).
- ``vila-tiny`` — the same classes at test size.

This module imports nothing heavy (no torch), so `--help` of every CLI stays instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.config import register_preset

PRESET_GROUP = "vila"
# The placeholder id an `<image>` becomes in input_ids (the LLaVA/VILA convention): negative, so it is never a
# vocabulary id; `VilaForCausalLM` replaces it by the image's features before the embedding lookup.
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100  # label of positions without a loss (visual tokens, prompts, padding)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "transformer", "downsample_2x2")


IMAGE_ASPECT_RATIOS = ("resize", "pad", "")
VISION_TOWERS = ("clip", "siglip")


@dataclass
class VisionConfig:
    """The vision tower: transformers `CLIPVisionModel` (CLIP ViT-L/14 at 336 px in the paper), or
    `SiglipVisionModel` (VILA 1.5's SigLIP-so400m at 384 px)."""

    tower: Literal["clip", "siglip"] = "clip"
    image_size: int = 336  # input side in pixels (Table 7: 224 or 336)
    patch_size: int = 14  # ViT patch side
    hidden_size: int = 1024  # ViT width (ViT-L: 1024)
    num_layers: int = 24  # transformer blocks
    num_heads: int = 16  # attention heads
    intermediate_size: int = 4096  # MLP hidden size
    hidden_act: str = "quick_gelu"  # CLIP's activation
    layer_norm_eps: float = 1e-5
    select_layer: int = -2  # which hidden state feeds the projector: the second-to-last layer's output
    # "patch" drops the first token (CLIP's CLS: 576 tokens at 336 px), "cls_patch" keeps every token. The release
    # (llava/model/multimodal_encoder/vision_encoder.py, feature_select) slices the same way for SigLIP, which
    # has no CLS: VILA 1.5 sets cls_patch there (all 27 x 27 patches).
    select_feature: Literal["patch", "cls_patch"] = "patch"
    use_head: bool = True  # SigLIP only: the attention-pooling head (SiglipVisionConfig.vision_use_head; unused)
    image_mean: tuple[float, float, float] = CLIP_MEAN  # pixel normalisation applied by `preprocess_images`
    image_std: tuple[float, float, float] = CLIP_STD
    # How an image becomes image_size x image_size (the release's `image_aspect_ratio`, llava/mm_utils.py):
    #   "resize"  stretched to the square (bicubic; VILA 1.5's "resize", and our runs: the mini world is square)
    #   "pad"     padded to a square with the mean colour, then the tower's processor (VILA 1.0's setting)
    #   ""        the tower's processor alone: CLIP resizes the shortest side and centre-crops, SigLIP resizes
    image_aspect_ratio: str = "resize"

    @property
    def grid(self) -> int:
        """Patches along a side (336 / 14 = 24)."""
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        """Tokens the tower hands the projector: CLIP has CLS + grid^2 and "patch" drops CLS; SigLIP has grid^2
        and "patch" drops the first patch, as the release's slice does."""
        total = self.grid**2 + (1 if self.tower == "clip" else 0)
        return total - (1 if self.select_feature == "patch" else 0)


@dataclass
class LlmConfig:
    """The LLM: transformers `LlamaForCausalLM` (Llama-2-7B in the paper)."""

    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32  # Llama-2-7B/13B: no grouped-query attention
    intermediate_size: int = 11008  # SwiGLU hidden size
    vocab_size: int = 32000  # LLaMA's SentencePiece vocabulary (VILA adds no image tokens to it)
    rms_norm_eps: float = 1e-5  # Llama-2
    max_position_embeddings: int = 4096  # Llama-2's context
    rope_theta: float = 10000.0
    # LlamaConfig's rope_scaling ({"type"/"rope_type": "linear" | "dynamic" | ..., "factor": ...}); empty = none.
    # VILA 1.5's builder sets {"type": "linear", "factor": ceil(model_max_length / max_position_embeddings)} when
    # trained past the LLM's context (llava/model/language_model/builder.py, context_length_extension).
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    hidden_act: str = "silu"  # the MLP's activation (LlamaConfig.hidden_act)
    attention_bias: bool = False  # biases on q/k/v/o (LlamaConfig.attention_bias)
    bos_token_id: int = 1  # <s>
    eos_token_id: int = 2  # </s>
    pad_token_id: int = 0  # <unk>, the pad of the released training code
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    attn_implementation: str = "sdpa"  # "eager" is the plain reference


@dataclass
class ProjectorConfig:
    """Vision features -> LLM embeddings (paper §3.1, Table 1; Table 7's downsample projector)."""

    # linear: one Linear | mlp2x_gelu: Linear-GELU-Linear (the released scripts) | transformer: Table 1 a-c |
    # downsample_2x2: 2x2 neighbours concatenated (space-to-channel), LayerNorm(4C)-Linear-GELU-Linear (Table 7)
    type: Literal["linear", "mlp2x_gelu", "transformer", "downsample_2x2"] = "mlp2x_gelu"
    # The Transformer-block projector: the paper gives no sizes. Our choice: pre-norm blocks at the vision width,
    # then one Linear into the LLM (a block at the LLM's 4096 width would be ~200M parameters per block).
    transformer_layers: int = 1
    transformer_heads: int = 16
    transformer_mlp_ratio: float = 4.0


@dataclass
class AblationConfig:
    """Model-side ablation switches (Tables 8 and 9)."""

    visual_expert: bool = False  # Table 8: trainable copy of the LLM's attention/MLP weights used at visual positions
    lora_rank: int = 0  # Table 9: 0 = off; > 0 = LoRA of this rank on the LLM's linear layers (peft)
    lora_alpha: int = 16  # LoRA scale numerator (peft's lora_alpha); not in the paper
    lora_dropout: float = 0.05  # not in the paper
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class VilaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    image_token_index: int = IMAGE_TOKEN_INDEX  # the one id per image in input_ids
    conversation: str = "vicuna_v1"  # default template name (model/vila/conversation.py)

    def validate(self) -> None:
        """Consistency checks that name the fields; called before a model is built."""
        v, llm, p = self.vision, self.llm, self.projector
        if v.image_size % v.patch_size:
            raise ValueError(f"vision.image_size={v.image_size} is not a multiple of vision.patch_size={v.patch_size}")
        if v.hidden_size % v.num_heads:
            raise ValueError(f"vision.hidden_size={v.hidden_size} is not divisible by vision.num_heads={v.num_heads}")
        if not (-v.num_layers <= v.select_layer <= v.num_layers):
            raise ValueError(f"vision.select_layer={v.select_layer} is outside the {v.num_layers}-layer tower")
        if v.tower not in VISION_TOWERS:
            raise ValueError(f"vision.tower={v.tower!r}; expected one of {list(VISION_TOWERS)}")
        if v.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"vision.image_aspect_ratio={v.image_aspect_ratio!r}; expected one of {list(IMAGE_ASPECT_RATIOS)}")
        if v.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"vision.select_feature={v.select_feature!r}; expected 'patch' or 'cls_patch'")
        if llm.hidden_size % llm.num_heads or llm.num_heads % llm.num_kv_heads:
            raise ValueError(
                f"llm.hidden_size={llm.hidden_size}, llm.num_heads={llm.num_heads}, llm.num_kv_heads={llm.num_kv_heads}:"
                " the width must divide into heads and the heads into key/value groups"
            )
        if max(llm.bos_token_id, llm.eos_token_id, llm.pad_token_id) >= llm.vocab_size:
            raise ValueError(f"special ids (bos, eos, pad) must lie below llm.vocab_size={llm.vocab_size}")
        if 0 <= self.image_token_index < llm.vocab_size:
            raise ValueError(
                f"image_token_index={self.image_token_index} is a vocabulary id (< llm.vocab_size={llm.vocab_size});"
                " use a negative id such as -200"
            )
        if p.type not in PROJECTOR_TYPES:
            raise ValueError(f"projector.type={p.type!r}; expected one of {list(PROJECTOR_TYPES)}")
        if p.type == "transformer" and v.hidden_size % p.transformer_heads:
            raise ValueError(
                f"projector.transformer_heads={p.transformer_heads} does not divide vision.hidden_size={v.hidden_size}"
            )
        if p.type == "downsample_2x2" and v.tokens != v.grid**2:
            raise ValueError(
                f"projector.type='downsample_2x2' needs a square grid of tokens; vision.tower={v.tower!r} with "
                f"vision.select_feature={v.select_feature!r} gives {v.tokens} (CLIP: 'patch', SigLIP: 'cls_patch')"
            )
        if self.ablation.lora_rank < 0:
            raise ValueError(f"ablation.lora_rank={self.ablation.lora_rank} must be >= 0")
        if self.ablation.visual_expert and self.ablation.lora_rank:
            raise ValueError("ablation.visual_expert and ablation.lora_rank > 0 are separate ablations; pick one")

    @property
    def vision_tokens(self) -> int:
        """Vision-tower tokens per image (576 at 336 px, 577 with CLS; 729 for SigLIP at 384 px)."""
        return self.vision.tokens

    @property
    def tokens_per_image(self) -> int:
        """LLM positions one image occupies (576 at 336 px; 144 with the 2x2 downsample projector)."""
        if self.projector.type == "downsample_2x2":
            return math.ceil(self.vision.grid / 2) ** 2
        return self.vision_tokens


@register_preset(PRESET_GROUP, "vila-7b")
def vila_7b() -> VilaConfig:
    """The paper's VILA-7B: CLIP ViT-L/14-336 + mlp2x_gelu + Llama-2-7B."""
    return VilaConfig()


@register_preset(PRESET_GROUP, "vila-13b")
def vila_13b() -> VilaConfig:
    """VILA-13B: the same with Llama-2-13B (5120 wide, 40 layers, 40 heads)."""
    return VilaConfig(llm=LlmConfig(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40, intermediate_size=13824))


@register_preset(PRESET_GROUP, "vila-mini")
def vila_mini() -> VilaConfig:
    """Mini world size (CPU): the 64-px images seen at 48 px with 8-px patches (6 x 6 = 36 tokens; 32 px = 4 x 4 is
    the 224-px analogue), a 3-layer 64-wide ViT, a 2-layer 64-wide LLaMA (the shapes of the mini `llm_pretrain` run,
    so it can stand in for Llama-2) over the mini world's 512-id BPE tokenizer
    (`<miniworld root>/tokenizer`: <unk>=0, <s>=1, </s>=2, so LLaMA's special ids hold; padded with <unk>)."""
    return VilaConfig(
        vision=VisionConfig(image_size=48, patch_size=8, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128),
        llm=LlmConfig(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=128,
            vocab_size=512,
            rms_norm_eps=1e-6,  # the shapes and eps of LaVIT's mini llm_pretrain LLaMA, which stands in for Llama-2
            max_position_embeddings=512,
            pad_token_id=0,  # <unk>, as Llama-2's: the pad id is the embedding's padding_idx, so </s> (2) would never train
        ),
        projector=ProjectorConfig(transformer_heads=4),
    )


@register_preset(PRESET_GROUP, "vila-tiny")
def vila_tiny() -> VilaConfig:
    """Test size: 16-px images, 4-px patches (16 tokens), 32-wide ViT and LLaMA, 64-id vocabulary."""
    return VilaConfig(
        vision=VisionConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64),
        llm=LlmConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=2,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=256,
            attn_implementation="eager",
        ),
        projector=ProjectorConfig(transformer_heads=2),
    )
