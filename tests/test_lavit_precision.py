"""bf16 done right (`model/lavit/precision.py`, the streaming loaders of `official.py` / `official_tokenizer.py`):

- after loading in bf16 every rotary `inv_freq` is float32 and equals the float32 recomputation, so the rotary
  angles below position 2048 are the float32 ones (a plain `Module.to(bf16)` is shown to be off by > 0.1 rad);
- the selector is float32, with the checkpoint's exact values, through `load_official_lavit` and through
  `load_official_visual_tokenizer` alike, and both give the same keep decisions;
- `</s>` is no embedding `padding_idx`: its row is initialised like the others and gets a gradient;
- weights are streamed: loading in bf16 gives exactly the fp32 load cast afterwards, and (a dispatch spy over every
  tensor the loader allocates) no float32 tensor of the LLM's shapes is ever created from bf16 files.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.lavit.configuration import lavit_tiny
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.official import load_official_lavit, write_official_layout
from model.lavit.official_tokenizer import load_official_visual_tokenizer
from model.lavit.precision import place
from model.lavit.vocabulary import build_byte_text_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config():
    cfg = lavit_tiny()
    return dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))


@pytest.fixture(scope="module")
def model_and_root(tmp_path_factory):
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(tiny_config())).eval()
    root = write_official_layout(model, build_byte_text_tokenizer(), tmp_path_factory.mktemp("ckpt") / "fp32")
    return model, root


@pytest.fixture(scope="module")
def bf16_root(model_and_root, tmp_path_factory):
    """The same model written with bf16 weight files (as a half-precision release would be)."""
    model, _ = model_and_root
    torch.manual_seed(0)
    copy = LavitForCausalLM(LavitHFConfig.from_lavit_config(tiny_config())).eval()
    copy.load_state_dict(model.state_dict())
    place(copy, "cpu", torch.bfloat16)
    return write_official_layout(copy, build_byte_text_tokenizer(), tmp_path_factory.mktemp("ckpt") / "bf16")


def rotaries(model):
    return [m for m in model.modules() if "inv_freq" in m._buffers]


def fp32_inv_freq(model):
    llm = model.lavit_config.llm
    dim = llm.hidden_size // llm.num_heads
    return 1.0 / (llm.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def test_rotary_frequencies_stay_float32_after_a_bf16_load(model_and_root):
    _, root = model_and_root
    model = load_official_lavit(root, tiny_config(), dtype=torch.bfloat16).model
    assert model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    found = rotaries(model)
    assert found
    positions = torch.arange(2048, dtype=torch.float32)
    exact = positions[:, None] * fp32_inv_freq(model)
    for rotary in found:
        for name in ("inv_freq", "original_inv_freq"):
            buf = getattr(rotary, name)
            assert buf.dtype == torch.float32, name
            assert torch.equal(buf, fp32_inv_freq(model)), name
        # The angles the layer computes (cos/sin before the cast to the activations' dtype) are the float32 ones.
        x = torch.zeros(1, 1, dtype=torch.float32)
        cos, sin = rotary(x, positions[None].long())
        torch.testing.assert_close(cos[0], torch.cat([exact, exact], -1).cos(), rtol=0, atol=1e-5)
        torch.testing.assert_close(sin[0], torch.cat([exact, exact], -1).sin(), rtol=0, atol=1e-5)
    # What `Module.to(torch.bfloat16)` did before: the rounded frequencies are far off (the test can fail).
    rounded = positions[:, None] * fp32_inv_freq(model).bfloat16().float()
    assert (rounded - exact).abs().max() > 0.1


def test_place_keeps_float32_parts_and_casts_the_rest(model_and_root):
    model, _ = model_and_root
    torch.manual_seed(0)
    copy = LavitForCausalLM(LavitHFConfig.from_lavit_config(tiny_config())).eval()
    copy.load_state_dict(model.state_dict())
    place(copy, "cpu", torch.bfloat16)
    for name, p in copy.visual_tokenizer.token_predictor.state_dict().items():
        assert p.dtype == torch.float32 and torch.equal(p, model.visual_tokenizer.token_predictor.state_dict()[name])
    assert all(r.inv_freq.dtype == torch.float32 for r in rotaries(copy))
    assert copy.visual_tokenizer.encoder.pos_embed.dtype == torch.bfloat16
    assert copy.language_model.lm_head.weight.dtype == torch.bfloat16


def test_selector_is_float32_and_identical_on_both_loader_paths(model_and_root, bf16_root):
    model, root = model_and_root
    cfg = tiny_config()
    whole = load_official_lavit(root, cfg, dtype=torch.bfloat16).model.visual_tokenizer
    alone = load_official_visual_tokenizer(root, cfg.tokenizer, dtype=torch.bfloat16)
    reference = model.visual_tokenizer.token_predictor.state_dict()
    for tok in (whole, alone):
        state = tok.token_predictor.state_dict()
        assert {v.dtype for v in state.values()} == {torch.float32}
        assert all(torch.equal(state[k], reference[k]) for k in reference)  # never rounded through bf16
        assert tok.encoder.pos_embed.dtype == torch.bfloat16
    features = torch.randn(3, cfg.tokenizer.num_patches, cfg.tokenizer.encoder_width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = whole.selector_log_probs(features.bfloat16())
        b = alone.selector_log_probs(features.bfloat16())
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    # From bf16 files too (a half-precision release): both paths agree on dtype and values.
    whole16 = load_official_lavit(bf16_root, cfg, dtype=torch.bfloat16).model.visual_tokenizer
    alone16 = load_official_visual_tokenizer(bf16_root, cfg.tokenizer, dtype=torch.bfloat16)
    for k, v in whole16.token_predictor.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, alone16.token_predictor.state_dict()[k])


def test_eos_is_no_padding_index_and_its_row_trains():
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(tiny_config())).train()
    eos = model.lavit_config.llm.eos_token_id
    embedding = model.language_model.get_input_embeddings()
    assert embedding.padding_idx is None
    assert embedding.weight[eos].abs().sum() > 0  # initialised like every other row (a padding row is zeroed)
    # </s> ends the first document and is read as an input before the second: its row must learn.
    ids = torch.tensor([1, 40, 41, eos, 1, 42, 43, eos])
    out = model.loss_on([model.text_item(ids), model.text_item(ids[:5])])
    out.loss.backward()
    grad = embedding.weight.grad
    assert grad[eos].abs().sum() > 0
    assert grad[40].abs().sum() > 0


class AllocationSpy(TorchDispatchMode):
    """Records (dtype, shape) of every real (non-meta) tensor an allocating aten op returns."""

    ALLOCATING = ("_to_copy", "clone", "empty", "empty_like", "empty_strided", "zeros", "ones", "full", "copy")

    def __init__(self):
        super().__init__()
        self.made: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.ALLOCATING:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and not t.is_meta and t.numel() > 1:
                    self.made.append((t.dtype, tuple(t.shape)))
        return out


def test_streamed_bf16_load_equals_fp32_load_cast_and_makes_no_float32_copy(model_and_root, bf16_root):
    model, root = model_and_root
    cfg = tiny_config()
    streamed = load_official_lavit(root, cfg, dtype=torch.bfloat16).model
    cast = place(load_official_lavit(root, cfg).model, "cpu", torch.bfloat16)
    a, b = streamed.state_dict(), cast.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k

    # bf16 files -> bf16 model: no float32 tensor of an LLM or tokenizer weight is created on the way (the old
    # loader read the tokenizer into float32 first and cast the whole model at the end). The only float32
    # allocations allowed are the selector (float32 by design), the quantizer's EMA state (float32 training state,
    # count K + sum K x d, copied once) and the rotary frequencies.
    tok_cfg = cfg.tokenizer
    selector = model.visual_tokenizer.token_predictor.state_dict()
    selector_numel = sum(v.numel() for v in selector.values())
    head_dim = cfg.llm.hidden_size // cfg.llm.num_heads
    allowed = selector_numel + 2 * tok_cfg.codebook_size * tok_cfg.code_dim + tok_cfg.codebook_size + head_dim
    matrices = {tuple(v.shape) for k, v in model.state_dict().items() if v.ndim >= 2 and "quantize." not in k}
    matrices -= {tuple(v.shape) for v in selector.values()}
    with AllocationSpy() as spy:
        loaded = load_official_lavit(bf16_root, cfg, dtype=torch.bfloat16).model
    float32_made = [shape for dtype, shape in spy.made if dtype == torch.float32]
    assert not [s for s in float32_made if s in matrices], float32_made
    total = sum(torch.Size(s).numel() for s in float32_made)
    assert total <= allowed, (total, allowed, float32_made)
    assert loaded.language_model.lm_head.weight.dtype == torch.bfloat16
    # The spy does see float32 copies when they happen: the plain cast of a float32 load makes bf16 ones, and a
    # bf16 -> float32 load makes float32 copies of every weight.
    with AllocationSpy() as spy:
        load_official_lavit(bf16_root, cfg, dtype=torch.float32)
    assert sum(torch.Size(s).numel() for d, s in spy.made if d == torch.float32) > 10 * allowed
