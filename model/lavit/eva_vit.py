"""EVA-CLIP ViT-g/14, the frozen visual encoder of LaVIT's tokenizer.

Only what the released encoder uses: absolute position embeddings, pre-norm blocks, exact GELU, no RoPE, no
layer-scale, no relative position bias. The attention has a bias-free fused ``qkv`` plus separate ``q_bias`` and
``v_bias`` (k has no bias) and scales q *before* the product. LaVIT takes the output of the last block (before the
final ``norm``) for every token; ``head`` (the CLIP projection) is in the checkpoint but never used.

Parameter names equal the released ``eva_vitg_psz14.bin``, so that file loads with strict checking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.lavit.tokenizer_config import VisualTokenizerConfig


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as the released code does (keeps bf16 runs stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2: the feed-forward of the EVA blocks, the token merger and the feature decoder."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EvaAttention(nn.Module):
    """Plain softmax attention, run through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on
    GPUs); `fused = False` is the explicit reference path (tests compare the two)."""

    fused = True

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # k carries no bias: the fused bias is (q_bias, 0, v_bias).
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, b, h, n, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            # EVA scales q before the product; SDPA's scale gives the same scores up to float rounding.
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (b, h, n, hd)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (b, h, n, n); EVA scales q before the product
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))  # (b, n, c)


class EvaBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps=eps)
        self.attn = EvaAttention(dim, num_heads)
        self.norm2 = FP32LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaPatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch_size: int, dim: int, in_channels: int = 3):
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h, w = pixel_values.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"EVA ViT expects {self.image_size}x{self.image_size} input, got {h}x{w}")
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (b, N, dim)


class EvaVisionTransformer(nn.Module):
    """EVA-CLIP vision tower. ``forward`` returns the last block's output for [CLS] + N patches: (B, 1+N, D)."""

    def __init__(self, cfg: VisualTokenizerConfig):
        super().__init__()
        dim = cfg.encoder_width
        self.patch_embed = EvaPatchEmbed(cfg.image_size, cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            EvaBlock(dim, cfg.encoder_heads, cfg.encoder_mlp, cfg.encoder_ln_eps) for _ in range(cfg.encoder_depth)
        )
        # Final norm and CLIP head exist in the released weights; LaVIT uses neither (features are taken before them).
        self.norm = FP32LayerNorm(dim, eps=cfg.encoder_ln_eps)
        self.head = nn.Linear(dim, cfg.encoder_head_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.pos_embed.dtype))  # (b, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (b, 1+N, D)
        for block in self.blocks:
            x = block(x)
        return x
