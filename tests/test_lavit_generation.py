"""LaVIT decoding (tiny preset): CFG sampling with/without KV cache, suppression rules, text post-processing,
the pixel decoder (Eq. 5 loss step, DDIM sampling) and the evaluation adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from model.lavit.configuration import lavit_tiny
from model.lavit.eval_adapter import LavitEvalAdapter
from model.lavit.generation import (
    ImageSampling,
    cfg_log_probs,
    clean_vqa_answer,
    cut_caption,
    first_step_log_probs,
    generate_text,
    image_step_distribution,
    sample_image_tokens,
    step_distribution_of_sampler,
)
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.vocabulary import build_byte_text_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LavitForCausalLM:
    torch.manual_seed(0)
    return LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()


@pytest.fixture(scope="module")
def runner(model) -> LavitEvalAdapter:
    return LavitEvalAdapter(model, build_byte_text_tokenizer(), model_id="lavit-tiny-random")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


PROMPTS = [torch.tensor([70, 71, 72, 73, 74]), torch.tensor([75])]
# Decoding settings come from the evaluation task; these are tiny-sized stand-ins of the released ones.
CAPTION = {"num_beams": 2, "min_new_tokens": 2, "max_new_tokens": 8, "length_penalty": 1.0, "early_stopping": False,
           "decoding": "released", "selection": "argmax"}  # fmt: skip
VQA = {"num_beams": 3, "min_new_tokens": 1, "max_new_tokens": 4, "length_penalty": 0.0, "early_stopping": True,
       "decoding": "released", "selection": "argmax", "lemmatize": False}  # fmt: skip
VISUAL = {"top_k": 50, "temperature": 1.0, "cfg_scale": 1.5}
PIXEL = {"num_inference_steps": 2, "decoder_guidance_scale": 5.0}


# --- classifier-free guidance ---------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.floats(0.0, 5.0))
def test_cfg_formula(seed, scale):
    g = torch.Generator().manual_seed(seed)
    c = torch.log_softmax(torch.randn(50, generator=g), -1)
    u = torch.log_softmax(torch.randn(50, generator=g), -1)
    torch.testing.assert_close(cfg_log_probs(c, u, scale), u + scale * (c - u))
    assert torch.equal(cfg_log_probs(c, u, 1.0), c)  # g = 1 is exactly the conditional distribution


def test_cfg_matches_transformers_unbatched_cfg_processor(model):
    """Our first-step scores equal transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor, whose
    unconditional context is the last input token alone, i.e. [IMG] (what the released code relies on)."""
    from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

    prompt = PROMPTS[0]
    ids = torch.cat([prompt, torch.tensor([model.vocab.img_start_id])])[None]
    with torch.no_grad():
        scores = model.language_model(ids).logits[:, -1]
        processor = UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model.language_model, use_cache=False)
        expected = processor(ids, scores)[0]
    torch.testing.assert_close(first_step_log_probs(model, prompt, 1.5), expected, atol=1e-5, rtol=1e-5)
    cond = torch.log_softmax(scores[0].float(), -1)
    torch.testing.assert_close(first_step_log_probs(model, prompt, 1.0), cond, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5, 3.0])
def test_cached_and_naive_sampling_emit_identical_tokens(model, cfg_scale):
    sampling = ImageSampling(top_k=20, temperature=1.0, cfg_scale=cfg_scale, min_new_tokens=4, max_new_tokens=16)
    cached = sample_image_tokens(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(5), use_cache=True)
    naive = sample_image_tokens(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(5), use_cache=False)
    static = sample_image_tokens(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(5), static_cache=True)
    assert [t.tolist() for t in cached] == [t.tolist() for t in naive] == [t.tolist() for t in static]
    assert all(len(t) >= 4 for t in cached)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_compiled_decoding_step_emits_the_straightforward_samplers_tokens(model, cfg_scale):
    """capture="compile": the static-cache step (forward, head, Eq. 7, top-k sampling) traced by torch.compile as
    ONE graph (fullgraph: a host read inside the step would fail the trace) gives the naive sampler's tokens; a
    second call reuses the compiled step. The "aot_eager" backend keeps the test quick (the same trace as inductor,
    run with eager kernels); inductor on CPU gave the same tokens here too but compiles for ~30 s."""
    from torch._dynamo.utils import counters

    sampling = ImageSampling(top_k=20, temperature=1.0, cfg_scale=cfg_scale, min_new_tokens=4, max_new_tokens=16)
    gens = lambda: [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]  # noqa: E731
    naive = sample_image_tokens(model, PROMPTS, sampling, generator=gens(), use_cache=False)
    compiled = [
        sample_image_tokens(model, PROMPTS, sampling, generator=gens(), static_cache=True, capture="compile",
                            compile_backend="aot_eager")
        for _ in range(2)
    ]  # fmt: skip
    frames = counters["frames"]["ok"]
    again = sample_image_tokens(
        model, PROMPTS, sampling, generator=gens(), static_cache=True, capture="compile", compile_backend="aot_eager"
    )
    assert counters["frames"]["ok"] == frames  # no recompilation: the same cache object, the same guards
    expected = [t.tolist() for t in naive]
    runs = [[t.tolist() for t in tokens] for tokens in (*compiled, again)]
    assert runs[0] == runs[1] == runs[2] == expected
    assert all(len(t) >= 4 for t in naive)


def test_capture_settings_are_checked(model):
    sampling = ImageSampling(top_k=20, temperature=1.0, cfg_scale=1.5, min_new_tokens=1, max_new_tokens=4)
    with pytest.raises(ValueError, match="capture='graphs'"):
        sample_image_tokens(model, PROMPTS, sampling, static_cache=True, capture="graphs")
    with pytest.raises(ValueError, match="static_cache=True"):
        sample_image_tokens(model, PROMPTS, sampling, capture="compile")
    with pytest.raises(ValueError, match="needs the model on CUDA, not cpu"):
        sample_image_tokens(model, PROMPTS, sampling, static_cache=True, capture="cudagraphs")


@pytest.mark.parametrize("use_cache,static", [(True, False), (True, True), (False, False)])
def test_deferred_stop_checks_do_not_change_the_tokens(model, use_cache, static):
    """The host reads "all finished?" every check_every steps only; rows finishing at different steps (and the
    whole batch finishing early) give the same tokens as checking every step."""
    v = model.vocab
    head = model.language_model.lm_head
    bias = torch.zeros(v.size)
    bias[v.img_end_id] = 1.0  # [/IMG] likely but not certain: rows end at different steps
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    prompts = PROMPTS + [torch.tensor([80, 81]), torch.tensor([82, 83, 84])]
    try:
        sampling = ImageSampling(top_k=20, temperature=1.0, cfg_scale=1.5, min_new_tokens=2, max_new_tokens=24)
        runs = {
            n: [t.tolist() for t in sample_image_tokens(
                model, prompts, sampling, generator=[torch.Generator().manual_seed(i) for i in range(4)],
                use_cache=use_cache, check_every=n, static_cache=static)]
            for n in (1, 3, 8)
        }  # fmt: skip
    finally:
        head.bias = None
    assert runs[1] == runs[3] == runs[8]
    lengths = [len(t) for t in runs[1]]
    assert len(set(lengths)) > 1 and max(lengths) < 24, lengths  # the case the check is about did happen


def test_image_sampling_emits_only_visual_ids_and_stops_at_end_token(model):
    v = model.vocab
    head = model.language_model.lm_head
    # Make [/IMG] by far the most likely token: sampling must still emit min_new_tokens visual ids first, then stop.
    bias = torch.zeros(v.size)
    bias[v.img_end_id] = 1e4
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    try:
        sampling = ImageSampling(top_k=5, temperature=1.0, cfg_scale=1.5, min_new_tokens=6, max_new_tokens=30)
        out = sample_image_tokens(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(0))
    finally:
        head.bias = None
    assert [len(t) for t in out] == [6, 6]
    assert all(bool(v.is_visual(t).all()) for t in out)
    # Make text ids and [IMG] by far the most likely: they are never sampled.
    bias = torch.zeros(v.size)
    bias[: v.img_end_id] = 1e4
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    try:
        sampling = ImageSampling(top_k=50, temperature=1.0, cfg_scale=1.5, min_new_tokens=0, max_new_tokens=12)
        out = sample_image_tokens(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(1))
    finally:
        head.bias = None
    assert all(0 < len(t) <= 12 and bool(v.is_visual(t).all()) for t in out)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_sampler_distribution_is_eq7_restricted_to_visual_ids(model, cfg_scale):
    """Evaluating the head on [/IMG] + visual ids only samples exactly what full-vocabulary Eq. 7 gives."""
    full = image_step_distribution(first_step_log_probs(model, PROMPTS[0], cfg_scale), model.vocab)
    ours = step_distribution_of_sampler(model, PROMPTS[0], cfg_scale)
    torch.testing.assert_close(ours, full, atol=1e-6, rtol=1e-4)


# --- text decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoding", ["released", "modern"])
def test_text_decoding_never_emits_visual_ids(model, decoding):
    v = model.vocab
    bias = torch.zeros(v.size)
    bias[v.img_start_id :] = 1e4  # the model "wants" [IMG], [/IMG] and visual ids
    hook = model.language_model.lm_head.register_forward_hook(lambda m, i, o: o + bias.to(o.dtype))
    try:
        h = model.lavit_config.llm.hidden_size
        rows = generate_text(
            model,
            [torch.randn(3, h), torch.randn(1, h)],
            [torch.tensor([70]), torch.tensor([])],
            num_beams=2,
            min_new_tokens=4,
            max_new_tokens=6,
            length_penalty=1.0,
            early_stopping=False,
            decoding=decoding,
        )
    finally:
        hook.remove()
    assert all(len(r) >= 4 for r in rows)
    assert all(0 <= t < v.text_vocab_size for r in rows for t in r)


def test_caption_and_vqa_post_processing():
    assert cut_caption("  a dog on a couch. it sleeps.") == "a dog on a couch"
    assert cut_caption("no period") == "no period"
    assert clean_vqa_answer(" two, maybe three.") == "two"
    assert clean_vqa_answer("yes\nquestion: more") == "yes"
    assert clean_vqa_answer("red Long answer: it is red") == "red "


def test_runner_implements_the_eval_interface(runner):
    from eval.interface import Captioner, ImageGenerator, QuestionAnswerer, TextScorer

    for protocol in (Captioner, QuestionAnswerer, ImageGenerator, TextScorer):
        assert isinstance(runner, protocol)
    caps = runner.caption(images(2), "", **CAPTION)
    answers = runner.answer(images(2), ["Question: what is it? Answer:", "Question: color? Answer:"], **VQA)
    assert len(caps) == 2 and all(isinstance(c, str) and "." not in c for c in caps)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_every_decoding_setting_comes_from_the_task(runner):
    """No decoding defaults in the adapter: a missing setting and an unknown one are errors naming them."""
    partial = {k: v for k, v in CAPTION.items() if k != "num_beams"}
    with pytest.raises(ValueError, match=r"LavitEvalAdapter.caption: generation settings missing \['num_beams'\]"):
        runner.caption(images(1), "", **partial)
    with pytest.raises(ValueError, match=r"answer: generation settings unknown \['temperature'\]"):
        runner.answer(images(1), ["Question: what? Answer:"], **VQA, temperature=1.0)
    with pytest.raises(ValueError, match=r"caption: generation settings missing \['decoding'\]"):
        runner.caption(images(1), "", **{k: v for k, v in CAPTION.items() if k != "decoding"})
    with pytest.raises(ValueError, match=r"generate_images: generation settings missing \['decoder_guidance_scale'\]"):
        runner.generate_images(["a cat"], [0], **VISUAL, min_new_tokens=1, max_new_tokens=2, num_inference_steps=1)


def test_score_text_is_the_sum_of_continuation_log_probs(runner, model):
    tok = runner.text_tokenizer
    score = runner.score_text(["The cat"], [" sat"])[0]
    ids = [1] + tok("The cat sat", add_special_tokens=False)["input_ids"]
    n_ctx = 1 + len(tok("The cat", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model.language_model(torch.tensor([ids])).logits[0].float(), -1)
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(n_ctx, len(ids)))
    assert score == pytest.approx(manual, abs=1e-3)
    batch = runner.score_text(["The cat", "A much longer context here"], [" sat", " ok"])
    assert batch[0] == pytest.approx(score, abs=1e-3)  # left padding in a batch does not change a row
    with_image = runner.score_text(["The cat"], [" sat"], images=images(1))
    assert np.isfinite(with_image[0])


# --- pixel decoder --------------------------------------------------------------------------------------------


def test_pixel_decoder_training_step_and_ddim_sampling(model):
    pd = model.pixel_decoder
    n, c = model.lavit_config.tokenizer.num_patches, model.lavit_config.tokenizer.unet_context_dim
    context = torch.randn(2, n, c, generator=torch.Generator().manual_seed(0))
    size = model.lavit_config.pixel_decoder.image_size
    target = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pd.unet.requires_grad_(True)
    pd.train()
    try:
        optimizer = torch.optim.SGD(pd.unet.parameters(), lr=1e-3)
        loss = pd.loss(target, context, generator=torch.Generator().manual_seed(2))
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in pd.unet.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)
        optimizer.step()
        assert all(p.grad is None for p in pd.vae.parameters())  # the autoencoder stays frozen
    finally:
        pd.unet.requires_grad_(False)
        pd.unet.zero_grad(set_to_none=True)
        pd.eval()
    out = pd.sample(context, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert out.shape == (2, 3, size, size)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    again = pd.sample(context, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again)


def test_generate_images_end_to_end(runner, model):
    out = runner.generate_images(["a red square"], max_new_tokens=8, min_new_tokens=2, **VISUAL, **PIXEL)
    size = model.lavit_config.pixel_decoder.image_size
    assert len(out) == 1 and out[0].size == (size, size) and out[0].mode == "RGB"


def test_multimodal_prompt_is_text_ids_then_image_visual_ids(runner, model):
    image = images(1)[0]
    ids = runner.multimodal_prompt_ids(["a dog like", image, "but red"])
    text_a = runner._ids(["a dog like"])[0]
    text_b = runner._ids(["but red"])[0]
    middle = ids[len(text_a) : len(ids) - len(text_b)]
    assert ids[: len(text_a)].tolist() == text_a.tolist() and ids[len(ids) - len(text_b) :].tolist() == text_b.tolist()
    assert len(middle) > 0 and bool(model.vocab.is_visual(middle).all())
    out = runner.generate_visual_ids([["a dog like", image]], max_new_tokens=4, min_new_tokens=1, **VISUAL)
    assert len(out) == 1 and bool(model.vocab.is_visual(out[0]).all())


def test_generated_image_depends_on_its_prompt_and_seed_not_on_the_batch(runner, model):
    """eval.runner passes one seed per prompt (`generate_images(prompts, seeds, **generation)`)."""
    settings = {"max_new_tokens": 6, "min_new_tokens": 2, **VISUAL}
    prompts, seeds = ["a much longer prompt about a red square", "cat"], [11, 22]
    together = runner.generate_visual_ids(prompts, seeds, **settings)
    alone = runner.generate_visual_ids(prompts[1:], seeds[1:], **settings)
    assert together[1].tolist() == alone[0].tolist()
    images_together = runner.generate_images(prompts, seeds, **settings, **PIXEL)
    images_alone = runner.generate_images(prompts[1:], seeds[1:], **settings, **PIXEL)
    difference = np.abs(np.asarray(images_together[1], dtype=int) - np.asarray(images_alone[0], dtype=int))
    assert difference.max() <= 1  # equal up to float rounding of a different batch shape
    other_seed = runner.generate_visual_ids(prompts[1:], [23], **settings)
    assert other_seed[0].tolist() != alone[0].tolist()  # the seed matters
