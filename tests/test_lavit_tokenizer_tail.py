"""The batch-vectorised tokenizer tail (gather of the kept tokens, quantizer, vit_proj once per batch) equals the
straightforward per-image path (a Python loop with `.nonzero()`, as the tail was written before) on random tiny
inputs: kept features exactly, embeddings within float32 rounding, codes identical wherever the nearest code is not
a float32 near-tie; the straight-through gradient to the keep mask is the same too."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lavit.tokenizer import build_tokenizer
from model.lavit.tokenizer_config import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after the module: later tests keep theirs
TOKENIZER = build_tokenizer(tiny()).eval()
N, D = TOKENIZER.cfg.num_patches, TOKENIZER.cfg.encoder_width


def loop_gather(values, keep):
    out = []
    for row, weights in zip(values, keep):
        index = (weights > 0.5).nonzero(as_tuple=True)[0]
        out.append(row[index] * weights[index, None].to(row.dtype))
    return out


def loop_codes_and_margins(kept):
    codes, margins = [], []
    for f in kept:
        z = TOKENIZER.encode_task_layer(f)
        codes.append(TOKENIZER.quantize.nearest_codes(z))
        flat = torch.nn.functional.normalize(z, dim=-1)
        dist = (flat[:, None] - TOKENIZER.quantize.embedding.weight[None]).pow(2).sum(-1)  # (k, K)
        two = dist.topk(2, largest=False).values if dist.shape[0] else dist.new_zeros(0, 2)
        margins.append(two[:, 1] - two[:, 0])
    return codes, margins


masks = st.integers(1, 5).flatmap(
    lambda b: st.lists(st.lists(st.booleans(), min_size=N, max_size=N), min_size=b, max_size=b)
)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(rows=masks, seed=st.integers(0, 2**16))
def test_vectorised_tail_equals_the_per_image_loop(rows, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(len(rows), N, D, generator=g)
    keep = torch.tensor(rows, dtype=torch.float32)
    with torch.no_grad():
        reference = loop_gather(values, keep)
        kept = TOKENIZER.gather_kept(values, keep)
        assert [k.shape for k in kept] == [r.shape for r in reference]
        assert all(torch.equal(a, b) for a, b in zip(kept, reference))
        codes = TOKENIZER.quantize_features(kept)
        ref_codes, margins = loop_codes_and_margins(reference)
        for c, r, m in zip(codes, ref_codes, margins):
            clear = m > 1e-4  # a float32 near-tie may legitimately go either way
            assert c.dtype == torch.long and torch.equal(c[clear], r[clear])
        for a, b in zip(TOKENIZER.project_to_llm(kept), [TOKENIZER.vit_proj(f) for f in reference]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(TOKENIZER.encode_for_quantizer(kept), [TOKENIZER.encode_task_layer(f) for f in reference]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(rows=masks, seed=st.integers(0, 2**16))
def test_tokenize_and_gradients_match_the_loop(rows, seed):
    g = torch.Generator().manual_seed(seed)
    size = TOKENIZER.cfg.image_size
    pixels = torch.randn(len(rows), 3, size, size, generator=g)
    keep_mask = torch.tensor(rows)
    with torch.no_grad():
        out = TOKENIZER.tokenize(pixels, keep_mask=keep_mask)
        reference = loop_gather(out.merged, out.keep_weights)
    assert all(torch.equal(a, b) for a, b in zip(out.kept_features, reference))
    assert [c.shape[0] for c in out.codes] == [int(r.sum()) for r in keep_mask]
    for a, b in zip(out.llm_embeds, [TOKENIZER.vit_proj(f) for f in reference]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Straight-through: the keep weights receive the same gradient through both gathers.
    values = torch.randn(len(rows), N, D, generator=g)
    grads = []
    for gather in (TOKENIZER.gather_kept, loop_gather):
        keep = keep_mask.float().requires_grad_(True)
        total = sum((f * torch.arange(D)).sum() for f in gather(values, keep))
        (torch.as_tensor(total) + keep.sum() * 0).backward()
        grads.append(keep.grad)
    torch.testing.assert_close(grads[0], grads[1])
