"""Packed stage-2 documents through the block-diagonal FlexAttention kernel (`model/lavit/packed_attention.py`)
equal the dense-mask path: the attention itself, the LLM's logits, and the stage's loss, to float32 rounding.

FlexAttention has no backward on CPU, so these compare forward passes (the training path is the same code)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lavit.configuration import lavit_tiny
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.packed_attention import BLOCK_DIAGONAL, block_diagonal_attention, document_block_mask
from train.lavit.unified import Doc, UnifiedTrainModule
from train.data import PackedSequence

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_mask(docs):
    L = docs.shape[1]
    return ((docs[:, :, None] == docs[:, None, :]) & torch.ones(L, L, dtype=torch.bool).tril())[:, None]


def packed_docs(lengths_per_row, L):
    """Rows of consecutive documents of the given lengths, the rest pads (each its own one-token document)."""
    rows = []
    for lengths in lengths_per_row:
        ids = [d for d, n in enumerate(lengths) for _ in range(n)][:L]
        rows.append(ids + list(range(len(lengths), len(lengths) + L - len(ids))))
    return torch.tensor(rows)


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 90), min_size=1, max_size=4), min_size=1, max_size=2),
    st.sampled_from([1, 2]),
)
def test_block_diagonal_attention_equals_the_dense_mask(lengths_per_row, kv_groups):
    L, h, d = 150, 4, 8  # L > one 128-block: blocks both skipped and partial
    docs = packed_docs(lengths_per_row, L)
    g = torch.Generator().manual_seed(sum(map(sum, lengths_per_row)))
    q = torch.randn(len(docs), h, L, d, generator=g)
    k, v = (torch.randn(len(docs), h // kv_groups, L, d, generator=g) for _ in range(2))
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = block_diagonal_attention(module, q, k, v, document_block_mask(docs), scaling=d**-0.5)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(docs), scale=d**-0.5, enable_gqa=kv_groups > 1)
    torch.testing.assert_close(out, dense.transpose(1, 2), rtol=1e-5, atol=1e-6)


def tiny_model():
    torch.manual_seed(0)
    cfg = lavit_tiny()
    cfg = dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))
    return LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg)).eval()


def test_llm_logits_and_stage_loss_equal_the_dense_mask_path():
    model = tiny_model()
    tcfg = model.lavit_config.tokenizer
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(tcfg.num_patches, generator=g) > 0.5
    docs = [
        Doc("text", [1, 40, 41, 42, 43, 44, 2]),
        Doc("generation", [1, 50, 51], codes=torch.tensor([3, 9, 9, 1, 5])),
        Doc("understanding", [60, 61, 62], codes=torch.randint(0, tcfg.codebook_size, (int(keep.sum()),), generator=g),
            keep=keep, pixel_values=torch.randn(3, tcfg.image_size, tcfg.image_size, generator=g)),
        Doc("text", [1, 70, 71, 72, 2]),
    ]  # fmt: skip
    rows = [
        PackedSequence(segments=[(docs[0], 2, 7), (docs[1], 0, docs[1].length()), (docs[3], 0, 3)],
                       length=5 + docs[1].length() + 3),
        PackedSequence(segments=[(docs[2], 0, docs[2].length()), (docs[3], 0, 5)], length=docs[2].length() + 5),
    ]  # fmt: skip
    seq_len = max(r.length for r in rows) + 4  # both rows padded
    results = {}
    for block in (False, True):
        module = UnifiedTrainModule(model, seq_len)
        module.block_diagonal = block
        with torch.no_grad():
            results[block] = module(rows)
    assert model.language_model.config._attn_implementation == BLOCK_DIAGONAL
    dense, block = results[False], results[True]
    torch.testing.assert_close(block.loss_sum, dense.loss_sum, rtol=1e-5, atol=1e-5)
    for name in dense.metric_sums:
        torch.testing.assert_close(block.metric_sums[name], dense.metric_sums[name], rtol=1e-5, atol=1e-5)
    assert block.metric_counts["ce_targets"] == dense.metric_counts["ce_targets"] > 0
    # The LLM itself: logits of a packed batch under both masks (the non-BlockMask path stays SDPA's).
    ids = torch.randint(0, 100, (2, 40), generator=g)
    embeds = model.embed_ids(ids)
    doc_ids = packed_docs([[10, 25], [40]], 40)
    positions = torch.cat([torch.arange(10), torch.arange(25), torch.zeros(5, dtype=torch.long)])
    positions = torch.stack([positions, torch.arange(40)])
    with torch.no_grad():
        a = model(inputs_embeds=embeds, attention_mask=dense_mask(doc_ids), position_ids=positions).logits
        b = model(inputs_embeds=embeds, attention_mask=document_block_mask(doc_ids), position_ids=positions).logits
        c = model(inputs_embeds=embeds).logits  # 2-D default mask through the registered mask function
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c[1], a[1], rtol=1e-5, atol=1e-5)  # row 1 is one document: plain causal


def test_forcing_the_kernel_on_another_attention_implementation_is_refused():
    model = tiny_model()
    model.language_model.set_attn_implementation("eager")
    module = UnifiedTrainModule(model, 8)
    module.block_diagonal = True
    with pytest.raises(ValueError, match="attn_implementation 'sdpa'"):
        module._document_mask(torch.zeros(1, 8, dtype=torch.long))
    module.block_diagonal = None  # default on CPU: the dense mask, whatever the implementation
    assert module._document_mask(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 1, 8, 8)
