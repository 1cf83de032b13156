"""One embedding call per training step (`LavitForCausalLM.shared_embedding`, used by the unified stage): the loss
and every gradient equal those of the per-piece `embed_ids` calls, and the embedding module runs once."""

from __future__ import annotations

import pytest
import torch

from model.lavit.configuration import lavit_tiny
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from train.lavit.unified import Doc, UnifiedTrainModule
from train.data import PackedSequence

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after the module: later tests keep theirs


def tiny_model():
    torch.manual_seed(0)
    cfg = lavit_tiny()
    import dataclasses

    cfg = dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))
    return LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg)).train()


def counting(model):
    calls = []
    handle = model.language_model.get_input_embeddings().register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_stage_step_embeds_once_and_matches_per_piece_calls():
    model = tiny_model()
    tcfg = model.lavit_config.tokenizer
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(tcfg.num_patches, generator=g) > 0.5
    docs = [
        Doc("text", [1, 40, 41, 42, 2]),
        Doc("generation", [1, 50, 51], codes=torch.tensor([3, 9, 9, 1])),
        Doc("understanding", [60, 61], codes=torch.randint(0, tcfg.codebook_size, (int(keep.sum()),), generator=g),
            keep=keep, pixel_values=torch.randn(3, tcfg.image_size, tcfg.image_size, generator=g)),
    ]  # fmt: skip
    rows = [
        PackedSequence(segments=[(docs[0], 0, 5), (docs[1], 0, docs[1].length())], length=5 + docs[1].length()),
        PackedSequence(segments=[(docs[2], 0, docs[2].length())], length=docs[2].length()),
    ]
    seq_len = max(r.length for r in rows) + 3  # both rows padded
    module = UnifiedTrainModule(model, seq_len)
    results = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        calls, handle = counting(model)
        if shared:
            out = module(rows)
        else:  # the per-piece path: the same step without the shared context
            out = module._forward(rows, *module._encode_understanding_images(rows))
        handle.remove()
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), grads_of(model), len(calls)))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert calls_a == 1 and calls_b > 3
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)
    embedding_grad = grads_a["language_model.model.embed_tokens.weight"]
    assert embedding_grad[40].abs().sum() > 0 and embedding_grad[model.vocab.code_to_id(torch.tensor(9))].abs().sum() > 0


def test_ids_outside_the_shared_set_are_refused():
    model = tiny_model()
    with model.shared_embedding(torch.tensor([1, 2, 3])):
        torch.testing.assert_close(model.embed_ids(torch.tensor([3, 1])), model.language_model.model.embed_tokens.weight[[3, 1]])
        try:
            model.embed_ids(torch.tensor([7]))
        except RuntimeError as err:
            assert "shared_embedding" in str(err)
        else:
            raise AssertionError("an id outside the shared set was embedded silently")
