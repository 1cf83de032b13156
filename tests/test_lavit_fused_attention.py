"""Fused attention paths equal the explicit ones in float32 (CPU; CI guards what GPUs run):

- EVA attention through `F.scaled_dot_product_attention` vs the explicit softmax(q*scale @ k^T) @ v;
- the merger's `masked_attention` (released masked softmax rearranged: eps/N and the normalisation after the value
  product) vs `masked_softmax(scores) @ v` exactly as released, on random masks including empty rows, full rows,
  soft weights and rows whose allowed scores lie far below the overall max (where the eps/N term dominates);
- the whole tokenizer (encoder + merger) and the straight-through gradient to the keep mask, fused vs explicit.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lavit.eva_vit import EvaAttention
from model.lavit.token_merger import (
    TokenCausalAttention,
    TokenCrossAttention,
    masked_attention,
    masked_softmax,
    self_attention_policy,
)
from model.lavit.tokenizer import build_tokenizer
from model.lavit.tokenizer_config import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after the module: later tests keep theirs


def set_fused(module, fused: bool):
    for m in module.modules():
        if isinstance(m, (EvaAttention, TokenCausalAttention, TokenCrossAttention)):
            m.fused = fused


def test_eva_attention_through_sdpa_equals_the_explicit_path():
    torch.manual_seed(0)
    attn = EvaAttention(64, 4)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(3, 17, 64) * 3
    fused = attn(x)
    attn.fused = False
    explicit = attn(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 12),
    q_len=st.integers(1, 6),
    kind=st.sampled_from(["binary", "soft", "empty", "full", "far"]),
    seed=st.integers(0, 2**16),
)
def test_masked_attention_equals_the_released_masked_softmax(n, q_len, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g) for length in (q_len, n, n))
    scale = 8**-0.5
    if kind == "binary":
        allowed = (torch.rand(2, 1, q_len, n, generator=g) > 0.5).float()
    elif kind == "soft":
        allowed = torch.rand(2, 1, q_len, n, generator=g)
    elif kind == "empty":
        allowed = torch.zeros(2, 1, q_len, n)
    elif kind == "full":
        allowed = torch.ones(2, 1, 1, n)
    else:  # only low-scoring keys allowed, the max sits on a masked key: W << eps, the eps/N term decides
        k[..., 0, :] = q.mean(dim=-2)[..., :] * 40  # key 0 scores far above the rest ...
        allowed = torch.ones(2, 1, q_len, n)
        allowed[..., 0] = 0.0  # ... and is masked
    scores = (q @ k.transpose(-2, -1)) * scale
    released = masked_softmax(scores, allowed, 1e-6) @ v
    torch.testing.assert_close(masked_attention(q, k, v, allowed, scale, 1e-6), released, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_merger_and_tokenizer_fused_equal_explicit_with_gradients(causal):
    torch.manual_seed(0)
    cfg = tiny()
    tok = build_tokenizer(cfg).eval()
    tok.causal_encoder.causal = causal
    pixels = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    keep_mask = torch.rand(3, cfg.num_patches) > 0.5
    keep_mask[0] = False  # nothing kept: every self-attention row but the diagonal is masked
    keep_mask[1] = True  # everything kept: the cross-attention has no allowed key at all
    results = []
    for fused in (True, False):
        set_fused(tok, fused)
        features = tok.encode_features(pixels)
        keep = keep_mask.float().requires_grad_(True)
        merged = tok.merge(features, keep)
        (merged * torch.linspace(-1, 1, merged.shape[-1])).sum().backward()
        results.append((features.detach(), merged.detach(), keep.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert results[0][2].abs().sum() > 0  # the straight-through gradient is there, and equal


def test_self_attention_policy_rows_through_masked_attention():
    # A causal policy built from a keep mask, as the merger uses it, on both forms.
    keep = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])
    allowed = self_attention_policy(keep, causal=True)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    released = masked_softmax((q @ k.transpose(-2, -1)) * 0.5, allowed) @ v
    torch.testing.assert_close(masked_attention(q, k, v, allowed, 0.5), released, rtol=1e-5, atol=1e-6)
