"""Token merger (paper §3.1, Eq. 2, Fig. 3b): compresses the dropped patches onto the kept ones.

Released name: ``causal_encoder``. L pre-norm blocks over all N positions (the decision mask M controls the
attention scope instead of splitting the sequence, so the batch stays rectangular):

    x  = raw encoder features X                     (B, N, D)
    x += causal_attn(norm0(x))                      token i attends j  iff  j <= i and (M_j = 1 or j = i)
    x += cross_attn(norm1(x), ln_vision(X))         every query attends only the dropped tokens (M_j = 0)
    x += mlp(norm2(x))
    out = norm(x)                                   the kept positions (raster order) are the visual part features

Both attentions use the released masked softmax (``masked_softmax``) rather than -inf masking: in float32,
``(exp(s - max) * A + eps/N) / (sum exp(s - max) * A + eps)`` with the max over *all* positions. Masked keys keep
a weight of (eps/N) / (sum + eps); a row with nothing allowed becomes uniform; with every token kept the
cross-attention is a uniform average over all N values. The mask enters multiplicatively, so a straight-through
Gumbel mask passes gradients to the selector. The attentions evaluate this formula as `masked_attention` (the same
arithmetic rearranged so that the eps/N term and the normalisation apply after the value product: fewer (N, N)
tensors, one fusable chain); `fused = False` runs the released order, and the tests hold the two together.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model.lavit.eva_vit import FP32LayerNorm, Mlp


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The released "softmax with policy". scores (..., Q, K); allowed broadcastable to it, 0/1 (or soft) weights.

    Computed in float32 and returned in the dtype of ``scores``. ``eps/K`` is added to every entry, so each row sums
    to exactly 1, including a row where nothing is allowed (which becomes uniform).
    """
    n = scores.shape[-1]
    shifted = scores - scores.max(dim=-1, keepdim=True).values  # max over all keys, masked ones included
    weights = shifted.float().exp() * allowed.float()
    probs = (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)
    return probs.to(scores.dtype)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float, eps: float = 1e-6
) -> torch.Tensor:
    """`masked_softmax(q @ k^T * scale, allowed, eps) @ v` rearranged so that only one (Q, K) tensor is made.

    With w = exp(s - max_all s) * A and W = sum_K w (float32, as released):

        ((w + eps/K) / (W + eps)) @ v  =  (w @ v + (eps/K) * sum_K v) / (W + eps)

    so the eps/K term becomes one (1, D) row and the normalisation a per-row division after the second product.
    Between the two products there is only an elementwise chain and two row reductions (max, sum), which a
    compiler fuses into one kernel (`torch.compile`); eager PyTorch makes 3 (Q, K) tensors instead of ~7.
    q (..., Q, D), k and v (..., K, D), allowed broadcastable to (..., Q, K) -> (..., Q, D) in v's dtype.
    """
    n = k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * scale  # scaled after the product (released code)
    w = (scores - scores.amax(dim=-1, keepdim=True)).float().exp() * allowed.float()
    total = w.sum(dim=-1, keepdim=True)  # (..., Q, 1)
    numerator = w.to(v.dtype) @ v + (eps / n) * v.sum(dim=-2, keepdim=True)
    return (numerator.float() / (total + eps)).to(v.dtype)


def self_attention_policy(keep: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """keep (B, N) 0/1 -> allowed (B, 1, N, N): i attends j iff (keep_j or j = i) [and j <= i when causal]."""
    n = keep.shape[-1]
    eye = torch.eye(n, dtype=keep.dtype, device=keep.device)
    allowed = keep[:, None, None, :] + (1.0 - keep[:, None, None, :]) * eye  # (b, 1, n, n)
    if causal:
        allowed = allowed * torch.ones(n, n, dtype=keep.dtype, device=keep.device).tril()
    return allowed


def cross_attention_policy(keep: torch.Tensor) -> torch.Tensor:
    """keep (B, N) -> allowed (B, 1, 1, N): every query attends only the dropped tokens."""
    return (1.0 - keep)[:, None, None, :]


class TokenCausalAttention(nn.Module):
    """Self-attention among the merger's tokens with the selection (and causal) policy."""

    fused = True  # `masked_attention`; False: the released form (`masked_softmax` then the product)

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, h, n, hd)
        if self.fused:
            out = masked_attention(q, k, v, allowed, self.scale, self.eps)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (b, h, n, n); scaled after the product (released)
            out = masked_softmax(scores, allowed, self.eps) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TokenCrossAttention(nn.Module):
    """Eq. 2: queries from the merger state, keys/values from ``ln_vision`` of the raw features, dropped tokens only."""

    fused = True  # `masked_attention`; False: the released form (`masked_softmax` then the product)

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.eps = eps
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, hd = self.num_heads, c // self.num_heads
        q = self.query(x).reshape(b, n, h, hd).transpose(1, 2)  # (b, h, n, hd)
        k = self.key(context).reshape(b, -1, h, hd).transpose(1, 2)
        v = self.value(context).reshape(b, -1, h, hd).transpose(1, 2)
        if self.fused:
            out = masked_attention(q, k, v, allowed, self.scale, self.eps)
        else:
            out = masked_softmax((q @ k.transpose(-2, -1)) * self.scale, allowed, self.eps) @ v  # (b, h, n, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MergerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, ln_eps: float, attention_eps: float):
        super().__init__()
        self.norm0 = FP32LayerNorm(dim, eps=ln_eps)
        self.token_causal_attn = TokenCausalAttention(dim, num_heads, attention_eps)
        self.norm1 = FP32LayerNorm(dim, eps=ln_eps)
        self.token_cross_attn = TokenCrossAttention(dim, num_heads, attention_eps)
        self.norm2 = FP32LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, self_allowed: torch.Tensor, cross_allowed: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.token_causal_attn(self.norm0(x), self_allowed)
        x = x + self.token_cross_attn(self.norm1(x), context, cross_allowed)
        return x + self.mlp(self.norm2(x))


class TokenMerger(nn.Module):
    """``depth`` merger blocks; ``depth=0`` is the "w/o token merger" ablation (Table 8): only the final norm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        depth: int,
        mlp_hidden: int,
        ln_eps: float = 1e-5,
        attention_eps: float = 1e-6,
        attention: Literal["causal", "bidirectional"] = "causal",
    ):
        super().__init__()
        if attention not in ("causal", "bidirectional"):
            raise ValueError(f"merger attention must be 'causal' or 'bidirectional', got {attention!r}")
        self.causal = attention == "causal"
        self.blocks = nn.ModuleList(
            MergerBlock(dim, num_heads, mlp_hidden, ln_eps, attention_eps) for _ in range(depth)
        )
        self.ln_vision = FP32LayerNorm(dim, eps=ln_eps)  # normalises the raw ViT features used as keys/values
        self.norm = FP32LayerNorm(dim, eps=ln_eps)  # post-norm of the merged tokens, for the next stage

    def forward(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """features (B, N, D) raw encoder output, keep (B, N) 0/1 (float, may carry grads) -> (B, N, D) for all N."""
        keep = keep.to(features.dtype)
        x = features
        if len(self.blocks):
            context = self.ln_vision(features)
            self_allowed = self_attention_policy(keep, causal=self.causal)
            cross_allowed = cross_attention_policy(keep)
            for block in self.blocks:
                x = block(x, context, self_allowed, cross_allowed)
        return self.norm(x)
