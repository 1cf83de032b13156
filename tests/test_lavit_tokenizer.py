"""LaVIT dynamic visual tokenizer (tiny preset of the same classes): properties, edge cases, training pieces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import get_preset
from model.lavit.quantizer import VectorQuantizer, codebook_usage, l2norm
from model.lavit.token_merger import masked_softmax
from model.lavit.token_selector import gumbel_softmax_sample
from model.lavit.tokenizer import DynamicVisualTokenizer, TokenizerOutput
from model.lavit.tokenizer_config import VisualTokenizerConfig

N = 16  # tiny preset: 56 px / patch 14
PROPS = settings(max_examples=12, deadline=None, derandomize=True)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a shared 2-core machine (no spin contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**changes) -> VisualTokenizerConfig:
    # init_std 0.2 (not 0.02) so random weights give attention patterns far from uniform: the causal test then
    # has a large signal to lose when the mask rule is broken.
    return dataclasses.replace(get_preset("lavit_tokenizer", "tiny"), init_std=0.2, **changes)


def build(**changes) -> DynamicVisualTokenizer:
    torch.manual_seed(0)
    return DynamicVisualTokenizer(tiny_cfg(**changes)).eval()


@pytest.fixture(scope="module")
def tok() -> DynamicVisualTokenizer:
    return build()


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def mask_from_bits(bits: list[bool]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)[None]


def assert_finite(out: TokenizerOutput) -> None:
    assert torch.isfinite(out.merged).all()
    for group in (out.kept_features, out.llm_embeds):
        for t in group:
            assert torch.isfinite(t).all()


# ---------------------------------------------------------------------------------------------------------------
# Output structure


@PROPS
@given(bits=st.lists(st.booleans(), min_size=N, max_size=N), seed=st.integers(0, 1000))
@torch.no_grad()
def test_token_count_and_raster_order(tok, bits, seed):
    keep = mask_from_bits(bits)
    out = tok.tokenize(images(1, seed), keep_mask=keep)
    k = int(keep.sum())
    assert out.kept_features[0].shape == (k, tok.cfg.encoder_width)
    assert out.codes[0].shape == (k,)
    assert out.llm_embeds[0].shape == (k, tok.cfg.llm_hidden_size)
    assert torch.equal(out.keep_mask, keep)
    # Raster order: the j-th token is the merger output at the j-th kept patch index, indices ascending.
    positions = [i for i, b in enumerate(bits) if b]
    for j, i in enumerate(positions):
        assert torch.equal(out.kept_features[0][j], out.merged[0, i])
    assert_finite(out)


def test_selected_mask_drives_token_count(tok):
    """Without a forced mask the selector decides; the count still equals the mask sum per image."""
    with torch.no_grad():
        out = tok.tokenize(images(3, 1), selection="sampled", generator=torch.Generator().manual_seed(3))
    for b in range(3):
        assert len(out.codes[b]) == int(out.keep_mask[b].sum()) == len(out.kept_features[b])


# ---------------------------------------------------------------------------------------------------------------
# Causality of the merger


def later_kept_change(tok: DynamicVisualTokenizer, bits: list[bool], query: int, seed: int) -> float:
    """Max change of the merger output at kept position ``query`` when every later *kept* token's features change."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, N, tok.cfg.encoder_width, generator=g)
    keep = torch.tensor(bits, dtype=torch.float32)[None]
    later_kept = [j for j in range(query + 1, N) if bits[j]]
    changed = features.clone()
    changed[0, later_kept] = torch.randn(len(later_kept), tok.cfg.encoder_width, generator=g) * 3
    with torch.no_grad():
        a = tok.merge(features, keep)[0, query]
        b = tok.merge(changed, keep)[0, query]
    return float((a - b).abs().max())


# A later kept token j still appears as a key of query i in both attentions, with the masked-softmax floor weight
# (eps/N) / (sum_allowed exp(s - max) + eps). The max runs over *all* keys, so when the allowed scores sit far
# below it the floor can reach ~1/N; with random weights the measured leakage stays below ~1e-4 (max over 40
# random masks: 8.7e-5). With eps = 0 the rule is exact up to float rounding (the shared max shifts): <= ~1e-6.
# A broken rule (bidirectional merger) moves the same output by ~0.8 or more.
CAUSAL_TOL = {1e-6: 1e-3, 0.0: 1e-5}


@pytest.fixture(scope="module")
def exact_tok() -> DynamicVisualTokenizer:
    return build(attention_eps=0.0)


@PROPS
@given(
    # at least two kept (a query with a later kept token) and one dropped (eps = 0 needs a key for the cross-attention)
    bits=st.lists(st.booleans(), min_size=N, max_size=N).filter(lambda b: 2 <= sum(b) < N),
    seed=st.integers(0, 1000),
)
def test_merger_is_causal_over_kept_tokens(tok, exact_tok, bits, seed):
    kept = [i for i, b in enumerate(bits) if b]
    query = kept[len(kept) // 2 - 1]  # a kept token with at least one later kept token
    for t in (tok, exact_tok):
        assert later_kept_change(t, bits, query, seed) < CAUSAL_TOL[t.cfg.attention_eps]


def test_causal_check_detects_a_broken_mask_rule():
    """Negative control: the same measurement on the bidirectional merger (i sees later kept tokens) exceeds the
    tolerance by orders of magnitude, so the causal test above can fail."""
    bidirectional = build(merger_attention="bidirectional")
    bits = [i % 2 == 0 for i in range(N)]
    assert later_kept_change(bidirectional, bits, query=4, seed=0) > 100 * CAUSAL_TOL[1e-6]


def partitioned_merger(merger, features: torch.Tensor, bits: list[bool], causal: bool = True) -> torch.Tensor:
    """Eq. 2 written with an explicit partition into X_r (kept) and X_d (dropped) and ordinary softmax attention,
    reusing the merger's weights. The released merger masks instead of partitioning; at the kept positions both
    agree (exactly when eps = 0)."""
    kept = [i for i, b in enumerate(bits) if b]
    dropped = [i for i, b in enumerate(bits) if not b]
    x = features[:, kept]
    context = merger.ln_vision(features[:, dropped])
    sdpa = F.scaled_dot_product_attention

    def heads(t: torch.Tensor, h: int) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)

    for block in merger.blocks:
        sa, ca = block.token_causal_attn, block.token_cross_attn
        q, k, v = sa.qkv(block.norm0(x)).chunk(3, dim=-1)
        h = sa.num_heads
        x = x + sa.proj(merge_heads(sdpa(heads(q, h), heads(k, h), heads(v, h), is_causal=causal)))
        q = heads(ca.query(block.norm1(x)), h)
        k, v = heads(ca.key(context), h), heads(ca.value(context), h)
        x = x + ca.proj(merge_heads(sdpa(q, k, v)))
        x = x + block.mlp(block.norm2(x))
    return merger.norm(x)


@PROPS
@given(
    bits=st.lists(st.booleans(), min_size=N, max_size=N).filter(lambda b: 1 <= sum(b) < N),
    seed=st.integers(0, 1000),
    causal=st.booleans(),
)
@torch.no_grad()
def test_masked_merger_equals_partitioned_eq2(exact_tok, tok, bits, seed, causal):
    features = torch.randn(1, N, tok.cfg.encoder_width, generator=torch.Generator().manual_seed(seed))
    keep = torch.tensor(bits, dtype=torch.float32)[None]
    kept = [i for i, b in enumerate(bits) if b]
    for t, atol in ((exact_tok, 1e-5), (tok, 1e-3)):  # released eps = 1e-6 leaves a small floor weight
        t.causal_encoder.causal = causal  # same weights, bidirectional rule when causal=False (Table 6)
        try:
            masked = t.merge(features, keep)[:, kept]
        finally:
            t.causal_encoder.causal = True
        expected = partitioned_merger(t.causal_encoder, features, bits, causal=causal)
        torch.testing.assert_close(masked, expected, atol=atol, rtol=0)


@torch.no_grad()
def test_selector_splits_local_and_global_channels(tok):
    """Token i's log-probs depend on the other tokens only through their mean (the global half of the channels)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, N, tok.cfg.encoder_width, generator=g)
    base = tok.selector_log_probs(features)
    permuted = features.clone()
    permuted[0, 1:] = features[0, 1:][torch.randperm(N - 1, generator=g)]
    torch.testing.assert_close(tok.selector_log_probs(permuted)[0, 0], base[0, 0], atol=1e-5, rtol=1e-5)
    changed = features.clone()
    changed[0, 5] = 3 * torch.randn(tok.cfg.encoder_width, generator=g)
    assert (tok.selector_log_probs(changed)[0, 0] - base[0, 0]).abs().max() > 1e-4
    torch.testing.assert_close(base.exp().sum(-1), torch.ones(1, N))


def test_dropped_tokens_reach_every_query(tok):
    """By design (Eq. 2) a later *dropped* token influences earlier kept tokens through the cross-attention."""
    bits = [True] * 4 + [False] * 12
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, N, tok.cfg.encoder_width, generator=g)
    changed = features.clone()
    changed[0, 10] += 3 * torch.randn(tok.cfg.encoder_width, generator=g)
    keep = torch.tensor(bits, dtype=torch.float32)[None]
    with torch.no_grad():
        diff = (tok.merge(features, keep)[0, 0] - tok.merge(changed, keep)[0, 0]).abs().max()
    assert diff > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Quantizer


@PROPS
@given(seed=st.integers(0, 1000), batch=st.integers(1, 3))
@torch.no_grad()
def test_codes_are_nearest_codebook_entries(tok, seed, batch):
    out = tok.tokenize(images(batch, seed), selection="sampled", generator=torch.Generator().manual_seed(seed))
    codebook = l2norm(tok.quantize.embedding.weight)
    for kept, codes in zip(out.kept_features, out.codes):
        assert codes.dtype == torch.long
        assert ((codes >= 0) & (codes < tok.cfg.codebook_size)).all()
        if len(codes) == 0:
            continue
        z = l2norm(tok.encode_task_layer(kept))
        dist = torch.cdist(z, codebook).pow(2)  # (K_i, K)
        chosen = dist.gather(1, codes[:, None])[:, 0]
        assert torch.all(chosen <= dist.min(dim=1).values + 1e-6)


def clustered_batch(seed: int = 0, clusters: int = 8, per_cluster: int = 64, dim: int = 8, noise: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    centres = l2norm(torch.randn(clusters, dim, generator=g))
    points = centres.repeat_interleave(per_cluster, 0) + noise * torch.randn(clusters * per_cluster, dim, generator=g)
    return l2norm(points)


def quantization_error(q: VectorQuantizer, z: torch.Tensor) -> float:
    codes = q.nearest_codes(z)
    return float((l2norm(z) - l2norm(q.lookup(codes))).pow(2).sum(-1).mean())


def test_kmeans_init_reduces_quantization_error():
    # More codes than clusters, as in LaVIT (K = 16384): k-means from random data points then covers every cluster.
    torch.manual_seed(123)
    q = VectorQuantizer(num_codes=32, code_dim=8)
    z = clustered_batch(seed=0)
    before = quantization_error(q, z)
    q.kmeans_init(z, iters=10, generator=torch.Generator().manual_seed(0))
    after = quantization_error(q, z)
    assert after < 0.25 * before, (before, after)
    assert after < 0.05  # about the within-cluster noise (8 dims x 0.05^2 = 0.02)
    assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(32), atol=1e-5)


def test_ema_updates_reduce_quantization_error_and_need_no_gradient():
    torch.manual_seed(123)
    q = VectorQuantizer(num_codes=8, code_dim=8, ema_decay=0.8).train()
    z = clustered_batch(seed=1)
    assert not q.embedding.weight.requires_grad  # the codebook follows the EMA, not the optimizer
    before = quantization_error(q, z)
    for _ in range(30):
        q(z)
    after = quantization_error(q, z)
    assert after < 0.5 * before, (before, after)
    # Eval mode leaves the codebook alone.
    q.eval()
    weight = q.embedding.weight.clone()
    q(z)
    assert torch.equal(weight, q.embedding.weight)


def test_straight_through_gradient_and_usage():
    q = VectorQuantizer(num_codes=16, code_dim=4, use_ema=False).eval()
    z = torch.randn(10, 4, requires_grad=True)
    out = q(z)
    assert torch.allclose(out.quantized, q.lookup(out.codes), atol=1e-6)  # forward value = codebook entries
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # gradient passes straight through to z
    usage = codebook_usage(torch.tensor([0, 0, 1, 1]), 16)
    assert usage.num_used == 2 and usage.fraction_used == 2 / 16 and abs(usage.perplexity - 2.0) < 1e-9


# ---------------------------------------------------------------------------------------------------------------
# Batching, selection, masked softmax, ratio loss


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000))
@torch.no_grad()
def test_batching_matches_one_at_a_time(tok, seed):
    pixels = images(3, seed)
    batched = tok.tokenize(pixels)
    for b in range(3):
        single = tok.tokenize(pixels[b : b + 1])
        assert torch.equal(single.keep_mask[0], batched.keep_mask[b])
        torch.testing.assert_close(single.kept_features[0], batched.kept_features[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.llm_embeds[0], batched.llm_embeds[b], atol=1e-5, rtol=1e-5)
        assert torch.equal(single.codes[0], batched.codes[b])
    rec_batched = tok.decode(batched.codes)
    for b in range(3):
        torch.testing.assert_close(tok.decode([batched.codes[b]])[0], rec_batched[b], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sampled_selection_is_seeded_and_matches_torch_gumbel_softmax(tok):
    pixels = images(2, 3)
    a = tok.tokenize(pixels, selection="sampled", generator=torch.Generator().manual_seed(5))
    b = tok.tokenize(pixels, selection="sampled", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.keep_mask, b.keep_mask)
    # With the global RNG, our sampler draws exactly what F.gumbel_softmax (the released call) draws.
    log_probs = torch.randn(4, N, 2).log_softmax(-1)
    torch.manual_seed(11)
    ours = gumbel_softmax_sample(log_probs, tau=1.0, hard=True)
    torch.manual_seed(11)
    theirs = F.gumbel_softmax(log_probs, tau=1.0, hard=True)
    assert torch.equal(ours, theirs)
    # Deterministic selection = argmax of the log-probabilities (index 0 = keep).
    det = tok.tokenize(pixels)
    assert torch.equal(det.keep_mask, det.selector_log_probs.argmax(-1) == 0)


@PROPS
@given(
    allowed_bits=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=4, max_size=4),
    seed=st.integers(0, 1000),
)
def test_masked_softmax_rows_sum_to_one(allowed_bits, seed):
    allowed_bits[0] = [False] * 6  # always include an empty row
    scores = 4 * torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(seed))
    allowed = torch.tensor(allowed_bits, dtype=torch.float32)[None, None]
    probs = masked_softmax(scores, allowed, eps=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs[..., 0, :], torch.full((1, 2, 6), 1 / 6))  # empty row -> uniform
    # The released formula, written out.
    e = (scores - scores.amax(-1, keepdim=True)).exp() * allowed
    expected = (e + 1e-6 / 6) / (e.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(probs, expected)


def test_masked_softmax_all_allowed_is_softmax():
    scores = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(masked_softmax(scores, torch.ones(1, 1, 1, 5)), scores.softmax(-1), atol=1e-5, rtol=0)


@PROPS
@given(kept=st.integers(0, N))
def test_ratio_loss_is_zero_at_rho(kept):
    t = build(keep_ratio=kept / N)
    keep = torch.zeros(2, N)
    keep[:, :kept] = 1
    assert float(t.ratio_loss(keep)) == 0.0
    other = torch.zeros(2, N)
    other[:, : (kept + 1) % (N + 1)] = 1
    expected = (kept / N - other.mean(1)).pow(2).mean()
    torch.testing.assert_close(t.ratio_loss(other), expected)


# ---------------------------------------------------------------------------------------------------------------
# Edge cases: nothing kept, everything kept


@torch.no_grad()
def test_keep_nothing_and_keep_everything(tok):
    pixels = images(2, 4)
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[1] = True  # image 0 keeps nothing, image 1 keeps everything
    out = tok.tokenize(pixels, keep_mask=keep)
    assert len(out.codes[0]) == 0 and len(out.kept_features[0]) == 0 and out.llm_embeds[0].shape == (0, 64)
    assert len(out.codes[1]) == N
    assert_finite(out)
    for codes in (out.codes, [out.codes[0]], [out.codes[0], out.codes[0]]):  # mixed batch and all-empty batches
        rec = tok.decode(codes)
        assert rec.shape == (len(codes), N, tok.cfg.encoder_width) and torch.isfinite(rec).all()
        ctx = tok.decoder_context(codes)
        assert ctx.shape == (len(codes), N, tok.cfg.unet_context_dim) and torch.isfinite(ctx).all()
    # With every token kept the cross-attention is a uniform average over all N values (mask-independent).
    allowed = (1.0 - keep[1:].float())[:, None, None, :]
    probs = masked_softmax(torch.randn(1, 2, N, N), allowed)
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / N))
    # Empty code list: the decoder's cross-attention output reduces to its projection bias.
    block = tok.decoder.blocks[0]
    x = torch.randn(1, N, tok.cfg.decoder_width)
    empty = block.cross_attn(x, torch.zeros(1, 0, tok.cfg.decoder_width), torch.zeros(1, 0))
    torch.testing.assert_close(empty, block.cross_attn.proj.bias.expand_as(empty))


def test_compute_loss_with_nothing_kept_is_finite_and_differentiable(tok):
    tok.train()
    try:
        loss = tok.compute_loss(images(2, 2), keep_mask=torch.zeros(2, N, dtype=torch.bool))
    finally:
        tok.eval()
    assert torch.isfinite(loss.loss) and loss.num_tokens == 0.0
    loss.loss.backward()
    tok.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------------------
# Training objective and ablations


def test_loss_gradients_reach_selector_merger_decoder_but_not_encoder():
    t = build()
    t.train()
    out = t.compute_loss(images(2, 0), selection="sampled", generator=torch.Generator().manual_seed(0))
    # Eq. 4 pieces are consistent.
    expected = out.recon_loss + 2.0 * out.ratio_loss + 1.0 * out.commitment_loss
    torch.testing.assert_close(out.loss, expected)
    assert 0.0 <= out.keep_ratio <= 1.0 and out.codebook_perplexity >= 1.0
    out.loss.backward()
    grad = lambda m: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)  # noqa: E731
    assert grad(t.token_predictor) > 0  # straight-through Gumbel mask is differentiable
    assert grad(t.causal_encoder) > 0 and grad(t.decoder) > 0 and grad(t.encode_task_layer) > 0
    assert all(p.grad is None for p in t.encoder.parameters())  # frozen ViT
    assert t.quantize.embedding.weight.grad is None  # EMA codebook


def test_stage_one_without_quantization():
    t = build()
    t.train()
    before = t.quantize.embedding.weight.clone()
    out = t.compute_loss(images(2, 0), quantize=False, generator=torch.Generator().manual_seed(0))
    assert float(out.commitment_loss.detach()) == 0.0 and out.codebook_fraction_used == 0.0
    assert torch.equal(before, t.quantize.embedding.weight)  # the codebook is untouched in stage 1
    with torch.no_grad():
        assert t.tokenize(images(1, 0), quantize=False).codes is None
    # Switching VQ on: k-means on the batch's encoded tokens lowers their quantization error.
    t.eval()
    batch = images(4, 5)
    with torch.no_grad():
        out = t.tokenize(batch, quantize=False)
        z = torch.cat(t.encode_for_quantizer(out.kept_features))
    before = quantization_error(t.quantize, z)
    used = t.init_codebook_kmeans(batch, selection="deterministic")
    assert used == z.shape[0]
    assert quantization_error(t.quantize, z) < 0.5 * before


@pytest.mark.parametrize(
    "changes",
    [dict(fixed_length=True), dict(use_merger=False), dict(merger_attention="bidirectional")],
    ids=["fixed_length", "no_merger", "bidirectional"],
)
def test_ablation_switches(changes):
    t = build(**changes)
    with torch.no_grad():
        out = t.tokenize(images(2, 0))
    assert_finite(out)
    if changes.get("fixed_length"):
        assert t.token_predictor is None and out.keep_mask.all()
        assert float(t.ratio_loss(out.keep_weights)) == 0.0
        with pytest.raises(ValueError, match="fixed_length"):
            t.tokenize(images(1, 0), keep_mask=torch.zeros(1, N, dtype=torch.bool))
    if changes.get("use_merger") is False:
        assert len(t.causal_encoder.blocks) == 0
        # No merging: kept tokens are the normalised raw features of the kept patches.
        expected = t.causal_encoder.norm(out.encoder_features)
        torch.testing.assert_close(out.merged, expected)
    t.train()
    loss = t.compute_loss(images(2, 1), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss.loss)


def test_bfloat16_runs_end_to_end():
    t = build().to(torch.bfloat16)
    with torch.no_grad():
        out = t.tokenize(images(2, 0), selection="sampled", generator=torch.Generator().manual_seed(0))
        assert out.merged.dtype == torch.bfloat16
        assert_finite(out)
        assert torch.isfinite(t.decode(out.codes)).all()
    t.train()
    loss = t.compute_loss(images(2, 0), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss.loss)
    loss.loss.backward()


def test_bad_inputs_fail_loudly(tok):
    with pytest.raises(ValueError, match="keep_mask must have shape"):
        tok.tokenize(images(1, 0), keep_mask=torch.ones(1, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown selection"):
        tok.tokenize(images(1, 0), selection="greedy")
    with pytest.raises(ValueError, match="56x56"):
        tok.tokenize(torch.randn(1, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------------------
# Presets, preprocessing, persistence, CLIP encoder


def test_paper_preset_on_meta_device_has_released_shapes():
    with torch.device("meta"):
        t = DynamicVisualTokenizer(get_preset("lavit_tokenizer", "paper"))
    tensors = list(t.parameters()) + list(t.buffers())
    assert tensors and all(p.is_meta for p in tensors)  # no storage allocated
    sd = t.state_dict()
    shapes = {
        "quantize.embedding.weight": (16384, 32),
        "decoder.pos_embed": (1, 256, 1408),
        "decoder.query_embed": (1, 256, 1408),
        "decoder.in_proj.weight": (1408, 32),
        "decoder.unet_proj.weight": (768, 1408),
        "encoder.pos_embed": (1, 257, 1408),
        "encoder.blocks.0.attn.qkv.weight": (3 * 1408, 1408),
        "encoder.blocks.0.attn.q_bias": (1408,),
        "encoder.blocks.0.mlp.fc1.weight": (6144, 1408),
        "encoder.head.weight": (1024, 1408),
        "token_predictor.out_conv.0.weight": (704, 1408),
        "token_predictor.out_conv.2.weight": (352, 704),
        "token_predictor.out_conv.4.weight": (2, 352),
        "causal_encoder.blocks.0.token_causal_attn.qkv.weight": (3 * 1408, 1408),
        "causal_encoder.blocks.0.token_cross_attn.query.bias": (1408,),
        "causal_encoder.blocks.0.mlp.fc1.weight": (6144, 1408),
        "encode_task_layer.2.weight": (32, 1408),
        "vit_proj.weight": (4096, 1408),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(t.encoder.blocks) == 40 and len(t.causal_encoder.blocks) == 12 and len(t.decoder.blocks) == 12
    assert "encoder.blocks.0.attn.qkv.bias" not in sd  # fused qkv without bias; q/v biases are separate
    assert not any("ema" in k for k in sd)  # quantizer training state stays out of the state dict


def test_preprocess_resizes_without_crop_and_normalises(tok):
    from PIL import Image

    wide = Image.new("RGB", (120, 40), color=(255, 255, 255))
    gray = Image.new("L", (30, 30), color=0)
    pixels = tok.preprocess([wide, gray])
    assert pixels.shape == (2, 3, 56, 56)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    white = (1.0 - mean) / std
    torch.testing.assert_close(pixels[0, :, 28, 28], white)
    assert pixels[1].max() < 0  # black image -> below every channel mean


def test_save_and_from_pretrained_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = DynamicVisualTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tok.cfg
    pixels = images(2, 9)
    with torch.no_grad():
        a, b = tok.tokenize(pixels), loaded.tokenize(pixels)
        assert all(torch.equal(x, y) for x, y in zip(a.codes, b.codes))
        torch.testing.assert_close(tok.decode(a.codes), loaded.decode(b.codes), atol=0, rtol=0)


def tiny_clip_cfg(path: str = "") -> VisualTokenizerConfig:
    return tiny_cfg(encoder="clip_vit_l", encoder_path=path, encoder_ln_eps=1e-5)


def test_clip_encoder_tokenizer_and_local_folder(tmp_path):
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    t = DynamicVisualTokenizer(tiny_clip_cfg()).eval()
    with torch.no_grad():
        out = t.tokenize(images(2, 0))
        # Features = last encoder layer before post_layernorm, CLS dropped.
        hidden = t.encoder.vision(pixel_values=images(2, 0)).last_hidden_state
    torch.testing.assert_close(out.encoder_features, hidden[:, 1:])
    assert_finite(out)
    # A local CLIPVisionModel folder: architecture from its config.json, weights loaded strictly.
    t.encoder.vision.save_pretrained(tmp_path / "clip")
    from_folder = DynamicVisualTokenizer(tiny_clip_cfg(str(tmp_path / "clip"))).eval()
    from_folder.encoder.load_pretrained()
    with torch.no_grad():
        torch.testing.assert_close(from_folder.encode_features(images(1, 1)), t.encode_features(images(1, 1)))
    assert isinstance(from_folder.encoder.vision, CLIPVisionModel)
    with pytest.raises(FileNotFoundError, match="config.json"):
        DynamicVisualTokenizer(tiny_clip_cfg(str(tmp_path / "nowhere")))
