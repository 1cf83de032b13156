"""Vector quantizer of the visual part features (paper §3.1, Eq. 3).

v_i = argmin_j || l2(x_i) - l2(c_j) ||^2 over a codebook C of K unit vectors (``quantize.embedding.weight``).

Training recipe stated by the authors (the training code is not released): k-means initialisation of the codebook,
EMA codebook updates and the straight-through estimator; the selector and merger are first trained without
quantization, then VQ is switched on. Here:

- ``kmeans_init(vectors)`` runs spherical k-means on a batch of encoded vectors and writes the centroids.
- In training mode with ``use_ema`` the codebook follows an exponential moving average of the (normalised) vectors
  assigned to each code and is re-normalised; it receives no gradient.
- The forward pass returns ``l2(z) + sg(q - l2(z))`` (straight-through) and a commitment term ||l2(z) - sg(q)||^2.

The EMA statistics are kept outside ``state_dict`` (they are training state, not weights), so released checkpoints
load strictly; after loading they restart from the current codebook (count 1 per code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


class CodebookEmbedding(nn.Module):
    """Holds the K x code_dim codebook as ``weight`` (released parameter name ``quantize.embedding.weight``)."""

    def __init__(self, num_codes: int, code_dim: int):
        super().__init__()
        self.weight = nn.Parameter(l2norm(torch.randn(num_codes, code_dim)))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.weight)


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (M, code_dim) straight-through quantized vectors (forward value = codebook entries)
    codes: torch.Tensor  # (M,) long code indices in [0, K)
    commitment_loss: torch.Tensor  # scalar ||l2(z) - sg(q)||^2 averaged over vectors
    normalized: torch.Tensor  # (M, code_dim) l2(z), the vectors that were quantized


@dataclass
class CodebookUsage:
    perplexity: float  # exp(entropy of the code histogram); K when all codes are used uniformly
    fraction_used: float  # distinct codes used / K
    num_used: int  # distinct codes used


def codebook_usage(codes: torch.Tensor, num_codes: int) -> CodebookUsage:
    """Usage statistics of a flat tensor of code indices."""
    codes = codes.reshape(-1)
    if codes.numel() == 0:
        return CodebookUsage(perplexity=0.0, fraction_used=0.0, num_used=0)
    counts = torch.bincount(codes, minlength=num_codes).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    used = int((counts > 0).sum().item())
    return CodebookUsage(perplexity=math.exp(entropy), fraction_used=used / num_codes, num_used=used)


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, code_dim: int, ema_decay: float = 0.99, use_ema: bool = True):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.ema_decay = ema_decay
        self.use_ema = use_ema
        self.embedding = CodebookEmbedding(num_codes, code_dim)
        if use_ema:
            self.embedding.weight.requires_grad_(False)  # updated by EMA, not by the optimizer
        self._ema: dict[str, torch.Tensor] | None = None  # {"count": (K,), "sum": (K, d)}; see module docstring

    # -- lookup ----------------------------------------------------------------------------------------------
    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. 3: z (..., d) -> code indices (...); squared L2 between l2(z) and the normalised codebook."""
        flat = l2norm(z.reshape(-1, self.code_dim).float())
        codebook = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()  # (M, K)
        return dist.argmin(dim=1).reshape(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (...) -> codebook vectors (..., d)."""
        return self.embedding(codes)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (M, d) encoded vectors -> straight-through quantized vectors, codes, commitment loss (EMA in training)."""
        normalized = l2norm(z)
        codes = self.nearest_codes(normalized)
        if self.training and self.use_ema and normalized.shape[0] > 0:
            self.ema_update(normalized.detach(), codes)
        quantized = self.lookup(codes).to(normalized.dtype)
        if normalized.shape[0]:
            commitment = F.mse_loss(normalized, quantized.detach())
        else:
            commitment = normalized.sum() * 0.0  # keeps the graph when nothing was kept
        straight_through = normalized + (quantized - normalized).detach()
        return QuantizerOutput(straight_through, codes, commitment, normalized)

    # -- training: k-means init and EMA ----------------------------------------------------------------------
    @torch.no_grad()
    def kmeans_init(self, vectors: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None) -> None:
        """Spherical k-means on ``vectors`` (M, d); writes K centroids to the codebook and resets the EMA state.

        With fewer vectors than codes, the remaining centroids are random vectors from the batch plus small noise.
        """
        data = l2norm(vectors.reshape(-1, self.code_dim).float())
        m = data.shape[0]
        if m == 0:
            raise ValueError("kmeans_init needs at least one vector")
        device = data.device
        pick = torch.randperm(m, generator=generator, device="cpu")[: self.num_codes].to(device)
        if m < self.num_codes:
            extra = torch.randint(m, (self.num_codes - m,), generator=generator, device="cpu").to(device)
            pick = torch.cat([pick, extra])
        centroids = data[pick].clone()
        noise = torch.randn(centroids.shape, generator=generator, device="cpu").to(device)
        centroids = l2norm(centroids + 1e-3 * noise)
        for _ in range(iters):
            assign = (data @ centroids.t()).argmax(dim=1)  # nearest by cosine == nearest by L2 on the sphere
            sums = torch.zeros_like(centroids).index_add_(0, assign, data)
            counts = torch.bincount(assign, minlength=self.num_codes)
            centroids = torch.where(counts[:, None] > 0, l2norm(sums), centroids)  # empty clusters keep their centre
        self.embedding.weight.copy_(centroids.to(self.embedding.weight.dtype))
        self.reset_ema()

    @torch.no_grad()
    def reset_ema(self) -> None:
        """Restart the EMA statistics from the current codebook (count 1 per code)."""
        weight = self.embedding.weight.detach().float()
        self._ema = {"count": torch.ones(self.num_codes, device=weight.device), "sum": weight.clone()}

    @torch.no_grad()
    def ema_update(self, normalized: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step with vectors (M, d) (already l2-normalised) and their codes (M,). All-reduced under DDP."""
        weight = self.embedding.weight
        if self._ema is None or self._ema["sum"].device != weight.device:
            self.reset_ema()
        counts = torch.bincount(codes.reshape(-1), minlength=self.num_codes).float()
        sums = torch.zeros(self.num_codes, self.code_dim, device=weight.device).index_add_(
            0, codes.reshape(-1), normalized.reshape(-1, self.code_dim).float()
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        d = self.ema_decay
        self._ema["count"].mul_(d).add_(counts, alpha=1 - d)
        self._ema["sum"].mul_(d).add_(sums, alpha=1 - d)
        # The codebook lives on the unit sphere, so the mean direction is all that matters (no count division).
        weight.copy_(l2norm(self._ema["sum"]).to(weight.dtype))
