"""Token selector (paper §3.1, Eq. 1): per-patch keep/drop log-probabilities and the binary decision mask M.

Released name: ``token_predictor``. An MLP in the style of DynamicViT (Rao et al., 2021): the first half of the
hidden channels stays per token, the second half is averaged over the (kept) tokens and broadcast back, so each
decision sees both the patch and the whole image. Output index 0 = keep, index 1 = drop.

Selection of M from the log-probabilities pi:
- ``sampled``: hard Gumbel-softmax (tau = 1), M = one-hot index 0. This is what the released code runs at
  training *and* inference time; pass a ``torch.Generator`` to make it reproducible. With ``generator=None`` the
  noise comes from the global RNG exactly as ``F.gumbel_softmax`` draws it, so a seeded run matches the released code.
- ``deterministic``: M_i = [pi_i0 >= pi_i1] (argmax), for reproducible evaluation.
The hard sample is straight-through (value one-hot, gradient of the soft sample), so M is differentiable.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model.lavit.eva_vit import FP32LayerNorm

Selection = Literal["deterministic", "sampled"]
SELECTIONS = ("deterministic", "sampled")


class TokenSelector(nn.Module):
    def __init__(self, dim: int, ln_eps: float = 1e-5):
        super().__init__()
        self.in_conv = nn.Sequential(FP32LayerNorm(dim, eps=ln_eps), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, features: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, N, D), policy (B, N) tokens to pool over (default all) -> log-probabilities (B, N, 2)."""
        x = self.in_conv(features)
        b, n, c = x.shape
        if policy is None:
            policy = torch.ones(b, n, dtype=x.dtype, device=x.device)
        policy = policy.to(x.dtype).unsqueeze(-1)  # (b, n, 1)
        local = x[..., : c // 2]
        # Mean over the kept tokens; an all-zero policy would divide by zero, so the count is clamped.
        pooled = (x[..., c // 2 :] * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True).clamp_min(1e-6)
        x = torch.cat([local, pooled.expand(b, n, c - c // 2)], dim=-1)  # (b, n, c)
        return self.out_conv(x)


def gumbel_softmax_sample(
    log_probs: torch.Tensor, tau: float = 1.0, hard: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel-softmax over the last axis (Eq. 1); ``hard`` = straight-through one-hot. Matches ``F.gumbel_softmax``."""
    noise = torch.empty_like(log_probs).exponential_(generator=generator)
    gumbels = -noise.log()
    soft = ((log_probs + gumbels) / tau).softmax(dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


def select_tokens(
    log_probs: torch.Tensor,
    selection: Selection = "deterministic",
    tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keep mask M (B, N) as float 0/1 from log-probabilities (B, N, 2). ``sampled`` carries straight-through grads."""
    if selection == "sampled":
        return gumbel_softmax_sample(log_probs, tau=tau, hard=True, generator=generator)[..., 0]
    if selection == "deterministic":
        return (log_probs.argmax(dim=-1) == 0).to(log_probs.dtype)
    raise ValueError(f"unknown selection {selection!r}; expected one of {SELECTIONS}")
