"""Packed stage-2 documents through a block-diagonal attention kernel instead of a dense (b, 1, L, L) mask.

Stage 2 packs several documents into each sequence of length L; a token attends to earlier tokens of its own
document only (`UnifiedTrainModule`). The straightforward form is a dense boolean mask, which SDPA reads in full for
every head of every layer (O(L^2) memory traffic) and which keeps SDPA off its fastest (flash) kernels. Here the
same rule is a FlexAttention `BlockMask` built from the (b, L) document ids: blocks of 128 x 128 positions outside
every document are skipped without being computed, and only blocks on a document boundary evaluate the rule
element by element.

- `document_block_mask(docs)`: (b, L) document ids -> the BlockMask of "same document and not in the future".
- `block_diagonal_attention`: the attention function registered with transformers as ``BLOCK_DIAGONAL``; a
  BlockMask goes through `flex_attention` (compiled on CUDA, where it is one fused kernel; eager on CPU, the
  unfused reference), any other mask through transformers' SDPA path unchanged.
- `enable_block_diagonal(language_model)`: switch a transformers model from "sdpa" to ``BLOCK_DIAGONAL`` (models on
  another implementation are left alone; returns whether it is on).

FlexAttention has no backward on CPU, so training uses it on CUDA only (`UnifiedTrainModule.block_diagonal`); the
CPU tests compare its forward pass with the dense mask's (same logits and loss to float32 rounding). Not yet run on
a GPU (none was available when it was written).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BLOCK_DIAGONAL = "lavit_block_diagonal"


def document_block_mask(docs: torch.Tensor) -> BlockMask:
    """docs (b, L) long: the document id of every position (each pad its own id) -> BlockMask (b, 1, L, L) of
    "query and key in the same document, key not after query": the dense mask `UnifiedTrainModule` builds."""
    b, length = docs.shape

    def same_document_causal(batch, head, q, kv):
        return (docs[batch, q] == docs[batch, kv]) & (kv <= q)

    return create_block_mask(same_document_causal, B=b, H=None, Q_LEN=length, KV_LEN=length, device=docs.device)


@lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def block_diagonal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: q (b, h, L, d), k/v (b, h_kv, L, d) -> ((b, L, h, d), None)."""
    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout > 0:
        raise ValueError("block-diagonal attention has no dropout (LLaMA's attention_dropout is 0)")
    gqa = query.shape[1] != key.shape[1]
    if query.device.type != "cuda":
        with warnings.catch_warnings():  # eager flex warns that it is unfused: on CPU it is the reference path
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=gqa)
    else:
        out = _compiled_flex()(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(BLOCK_DIAGONAL, block_diagonal_attention)
AttentionMaskInterface.register(BLOCK_DIAGONAL, sdpa_mask)  # 2-D padding masks become SDPA's masks, as before


def enable_block_diagonal(language_model) -> bool:
    """Route `language_model`'s attention through `block_diagonal_attention` (idempotent). Only a model on "sdpa"
    is switched (its non-BlockMask calls are then exactly SDPA's); returns whether the model now uses it."""
    current = language_model.config._attn_implementation
    if current == BLOCK_DIAGONAL:
        return True
    if current != "sdpa":
        return False
    language_model.set_attn_implementation(BLOCK_DIAGONAL)
    return language_model.config._attn_implementation == BLOCK_DIAGONAL
