"""Feature decoder (paper §3.1, "reconstruct the original visual semantic features"; released ``VQDecoder``).

N learned queries (one per patch) attend to the K_i quantized codes of an image and regress the raw encoder
features of all N patches. The codes are projected (``in_proj``), zero-padded to the longest sequence in the batch,
and get a learned ``pos_embed`` indexed by their position *in the kept sequence* (0..K-1, not the patch position).
Padding is masked by adding -10000 to the cross-attention scores (as released): with no real code the softmax is
uniform over the padded slots instead of NaN. Blocks are pre-norm: unmasked self-attention among the queries,
cross-attention to the codes, MLP. ``unet_proj`` maps the reconstruction to the pixel decoder's context width.
"""

from __future__ import annotations

import torch
from torch import nn

from model.lavit.eva_vit import FP32LayerNorm, Mlp

PAD_SCORE = -10000.0  # additive score of padded codes (released value; -inf would give NaN for empty rows)


class DecoderSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, h, n, hd)
        probs = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (b, h, n, n)
        return self.proj((probs @ v).transpose(1, 2).reshape(b, n, c))


class DecoderCrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, codes: torch.Tensor, code_mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) queries, codes (B, K, C), code_mask (B, K) 1 = real code, 0 = padding."""
        b, n, c = x.shape
        h, hd = self.num_heads, c // self.num_heads
        q = self.query(x).reshape(b, n, h, hd).transpose(1, 2)  # (b, h, n, hd)
        k = self.key(codes).reshape(b, -1, h, hd).transpose(1, 2)  # (b, h, K, hd)
        v = self.value(codes).reshape(b, -1, h, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (b, h, n, K)
        scores = scores + (1.0 - code_mask.to(scores.dtype))[:, None, None, :] * PAD_SCORE
        probs = scores.softmax(dim=-1)
        return self.proj((probs @ v).transpose(1, 2).reshape(b, n, c))  # K = 0: zeros -> proj bias


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, ln_eps: float):
        super().__init__()
        self.norm0 = FP32LayerNorm(dim, eps=ln_eps)
        self.self_attn = DecoderSelfAttention(dim, num_heads)
        self.norm1 = FP32LayerNorm(dim, eps=ln_eps)
        self.cross_attn = DecoderCrossAttention(dim, num_heads)
        self.norm2 = FP32LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, codes: torch.Tensor, code_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm0(x))
        x = x + self.cross_attn(self.norm1(x), codes, code_mask)
        return x + self.mlp(self.norm2(x))


class VQDecoder(nn.Module):
    def __init__(
        self,
        num_patches: int,
        code_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_hidden: int,
        out_dim: int,
        unet_context_dim: int,
        ln_eps: float = 1e-5,
    ):
        super().__init__()
        self.num_patches = num_patches
        self.in_proj = nn.Linear(code_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))  # by position in the kept sequence
        self.query_embed = nn.Parameter(torch.zeros(1, num_patches, dim))  # one query per reconstructed patch
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, mlp_hidden, ln_eps) for _ in range(depth))
        self.norm = FP32LayerNorm(dim, eps=ln_eps)
        self.decode_task_layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))
        self.unet_proj = nn.Linear(out_dim, unet_context_dim)

    def pad_codes(self, code_vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """List of (K_i, code_dim) -> padded in_proj(codes) + pos_embed (B, K_max, C) and mask (B, K_max)."""
        lengths = [int(v.shape[0]) for v in code_vectors]
        longest = max(lengths, default=0)
        if longest > self.num_patches:
            raise ValueError(f"at most {self.num_patches} codes per image, got lengths {lengths}")
        dim = self.in_proj.out_features
        ref = self.in_proj.weight
        padded = torch.zeros(len(code_vectors), longest, dim, dtype=ref.dtype, device=ref.device)
        mask = torch.zeros(len(code_vectors), longest, dtype=ref.dtype, device=ref.device)
        for i, vectors in enumerate(code_vectors):
            if lengths[i]:
                padded[i, : lengths[i]] = self.in_proj(vectors.to(ref.dtype))  # (K_i, C)
                mask[i, : lengths[i]] = 1.0
        # Padded slots are zeros + pos_embed, as released (they only matter for an image with no code at all).
        return padded + self.pos_embed[:, :longest], mask

    def forward(self, code_vectors: list[torch.Tensor]) -> torch.Tensor:
        """List of B quantized-code tensors (K_i, code_dim) -> reconstructed features x_rec (B, N, out_dim)."""
        codes, mask = self.pad_codes(code_vectors)
        x = self.query_embed.expand(len(code_vectors), -1, -1)  # (B, N, C)
        for block in self.blocks:
            x = block(x, codes, mask)
        return self.decode_task_layer(self.norm(x))  # (B, N, out_dim)
