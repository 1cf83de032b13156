"""Beam search with transformers-4.33 (`released`) and transformers-5 (`modern`) scoring (model/lavit/beam_search.py):
`modern` equals transformers' own `generate`; hand-built log-probabilities where the n + 1 accounting of
`released` picks a different beam; `released` vs `modern` on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from model.lavit.beam_search import BeamSettings, ReleasedHypotheses, beam_search, causal_lm_step, released_output_ids
from model.lavit.configuration import lavit_tiny
from model.lavit.generation import generate_text
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig

X, Y, EOS, Z, W = 0, 1, 2, 3, 4  # a 5-token toy vocabulary; EOS = 2 as in LLaMA


pytestmark = pytest.mark.usefixtures("one_thread")


def table_step(table: dict[tuple[int, ...], dict[int, float]], default: dict[int, float], batch: int, num_beams: int):
    """A StepFn whose next-token distribution depends on the generated prefix only: table[prefix] = {token: p}
    (missing tokens get p = 0). Logits are log p, so the search sees exactly these log-probabilities."""
    prefixes: list[tuple[int, ...]] = [()] * (batch * num_beams)

    def step(tokens, origin):
        nonlocal prefixes
        if tokens is not None:
            prefixes = [prefixes[int(o)] + (int(t),) for o, t in zip(origin, tokens)]
        rows = []
        for prefix in prefixes:
            probs = torch.zeros(5, dtype=torch.float64)
            for token, p in table.get(prefix, default).items():
                probs[token] = p
            assert abs(float(probs.sum()) - 1.0) < 1e-9, prefix
            rows.append(probs.log().float())
        return torch.stack(rows)

    return step


def run(table, default, settings, decoding):
    return beam_search(table_step(table, default, 1, settings.num_beams), 1, settings, decoding)[0]


DEFAULT = {X: 0.3, Y: 0.3, EOS: 0.1, Z: 0.15, W: 0.15}


def test_max_length_beam_counts_the_placeholder():
    """At max_new_tokens the open beams join the hypotheses: `released` divides their sum by max_new + 1 (the BOS
    placeholder counted), `modern` by max_new. [x z] (sum -1.650) beats [x </s>] (sum -1.427) only with the + 1."""
    table = {
        (): {X: 0.6, Y: 0.3, Z: 0.05, W: 0.05},
        (X,): {EOS: 0.4, Z: 0.32, W: 0.28},
        (Y,): {X: 0.25, EOS: 0.25, Z: 0.25, W: 0.25},
    }
    s = BeamSettings(num_beams=2, min_new_tokens=1, max_new_tokens=2, eos_token_id=EOS, length_penalty=1.0)
    released, modern = run(table, DEFAULT, s, "released"), run(table, DEFAULT, s, "modern")
    s_ended = math.log(0.6) + math.log(0.4)  # [x] </s>
    s_long = math.log(0.6) + math.log(0.32)  # [x z], cut by the length limit
    assert released.tokens == [X, Z] and not released.ended
    assert released.score == pytest.approx(s_long / 3, abs=1e-6)  # n = 2 tokens + the placeholder
    assert modern.tokens == [X] and modern.ended
    assert modern.score == pytest.approx(s_ended / 2, abs=1e-6)  # the same for both: 1 token + </s>
    # With the length penalty off, the sums decide and both agree.
    s0 = BeamSettings(num_beams=2, min_new_tokens=1, max_new_tokens=2, eos_token_id=EOS, length_penalty=0.0)
    assert run(table, DEFAULT, s0, "released").tokens == run(table, DEFAULT, s0, "modern").tokens == [X]


def test_early_stopping_test_divides_by_n_plus_one():
    """After step 2 both keep [x </s>] and [y </s>]. `modern` stops: the best running beam [x z] can reach at most
    -1.897 / 2 < the worst kept -0.746. `released` bounds with the best candidate over n + 1 (-1.386 / 3), goes
    on, and finds [x z </s>] (-1.948 / 3 = -0.649), better than [x </s>] (-0.693)."""
    table = {
        (): {X: 0.5, Y: 0.45, Z: 0.05},
        (X,): {EOS: 0.5, Z: 0.3, W: 0.2},
        (Y,): {EOS: 0.5, Z: 0.25, W: 0.25},
        (X, Z): {EOS: 0.95, W: 0.05},
    }
    s = BeamSettings(num_beams=2, min_new_tokens=1, max_new_tokens=4, eos_token_id=EOS, length_penalty=1.0)
    released, modern = run(table, DEFAULT, s, "released"), run(table, DEFAULT, s, "modern")
    assert modern.tokens == [X] and modern.ended
    assert released.tokens == [X, Z] and released.ended
    assert released.score == pytest.approx((math.log(0.5) + math.log(0.3) + math.log(0.95)) / 3, abs=1e-6)
    # early_stopping=True stops both as soon as two hypotheses are kept: the same answer.
    s_true = BeamSettings(num_beams=2, min_new_tokens=1, max_new_tokens=4, eos_token_id=EOS, early_stopping=True)
    assert run(table, DEFAULT, s_true, "released").tokens == run(table, DEFAULT, s_true, "modern").tokens == [X]


def test_released_hypotheses_bookkeeping():
    book = ReleasedHypotheses(num_beams=2, length_penalty=1.0, early_stopping=False, max_length=9)
    book.add([5], -3.0, ended=True)  # length 1 + 1 -> -1.5
    assert not book.is_done(-0.1, cur_len=3)  # fewer than num_beams kept
    book.add([5, 6, 6], -2.0, ended=True)  # length 1 + 3 -> -0.5
    book.add([7], -4.0, ended=True)  # -2.0: worse than the worst kept (-1.5), not kept
    assert sorted(b[0] for b in book.beams) == [-1.5, -0.5]
    assert book.worst_score == -1.5
    assert book.is_done(-4.5, cur_len=3)  # -1.5 >= -4.5 / 3
    assert not book.is_done(-4.4, cur_len=3)
    book.add([8] * 7, -4.0, ended=False)  # length 8 -> -0.5: ties the best, the later one wins
    assert book.best().tokens == [8] * 7
    never = ReleasedHypotheses(num_beams=1, length_penalty=1.0, early_stopping="never", max_length=4)
    never.add([1], -1.0, ended=True)  # -0.5
    assert not never.is_done(-1.9, cur_len=2)  # bound -1.9 / 4 (max_length, not cur_len) > -0.5
    assert never.is_done(-2.0, cur_len=2)


def test_settings_are_checked():
    for bad in (
        dict(num_beams=1),
        dict(min_new_tokens=5, max_new_tokens=4),
        dict(early_stopping="sometimes"),
        dict(repetition_penalty=1.2),
    ):
        s = dict(num_beams=2, min_new_tokens=0, max_new_tokens=4, eos_token_id=EOS) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            run({}, DEFAULT, BeamSettings(**s), "released")
    with pytest.raises(ValueError, match="decoding"):
        run({}, DEFAULT, BeamSettings(num_beams=2, min_new_tokens=0, max_new_tokens=2, eos_token_id=EOS), "old")


# --- the tiny model -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> LavitForCausalLM:
    torch.manual_seed(0)
    return LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()


def sharpened(model, eos_bias: float):
    """Random tiny logits are nearly flat; scale them so beams separate, and bias </s> so it competes."""
    bias = torch.zeros(model.vocab.size)
    bias[model.lavit_config.llm.eos_token_id] = eos_bias
    return model.language_model.lm_head.register_forward_hook(lambda m, i, o: o * 40 + bias.to(o.dtype))


def inputs(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    h = model.lavit_config.llm.hidden_size
    embeds = [torch.randn(3, h, generator=g), torch.randn(1, h, generator=g), torch.randn(2, h, generator=g)]
    prompts = [torch.tensor([70]), torch.tensor([], dtype=torch.long), torch.tensor([5, 6, 7])]
    return embeds, prompts


def strip_pad(row: list[int], pad: int = 2) -> list[int]:
    while row and row[-1] == pad:
        row = row[:-1]
    return row


CASES = [  # (seed, eos bias, num_beams, min_new, max_new, length_penalty, early_stopping)
    (2, 18.0, 2, 2, 12, 1.0, False),  # caption-like
    (4, 26.0, 2, 2, 12, 1.0, False),
    (7, 38.0, 2, 2, 12, 1.0, False),
    (2, 18.0, 5, 2, 10, 0.0, True),  # VQA-like
    (3, 22.0, 3, 0, 8, 1.0, "never"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"seed{c[0]}-beams{c[2]}-es{c[6]}" for c in CASES])
def test_modern_equals_transformers_generate(model, case):
    seed, eos_bias, nb, mn, mx, lp, es = case
    embeds, prompts = inputs(model, seed)
    hook = sharpened(model, eos_bias)
    try:
        batch = model.collate([model.understanding_item(e, p) for e, p in zip(embeds, prompts)])
        reference = model.language_model.generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            do_sample=False,
            num_beams=nb,
            min_new_tokens=mn,
            max_new_tokens=mx,
            length_penalty=lp,
            early_stopping=es,
            suppress_tokens=model.vocab.non_text_ids(),
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )
        settings = BeamSettings(
            num_beams=nb,
            min_new_tokens=mn,
            max_new_tokens=mx,
            eos_token_id=2,
            length_penalty=lp,
            early_stopping=es,
            suppress_ids=tuple(model.vocab.non_text_ids()),
        )
        step = causal_lm_step(model.language_model, batch.inputs_embeds, batch.attention_mask, nb)
        ours = beam_search(step, 3, settings, "modern")
    finally:
        hook.remove()
    assert [r.tokens for r in ours] == [strip_pad(r.tolist()) for r in reference]


def test_released_and_modern_differ_on_the_tiny_model(model):
    """Caption settings (2 beams, length_penalty 1, no early stopping): with </s> competing, `released` searches
    on where `modern` stops, and returns longer captions (here for all three samples)."""
    embeds, prompts = inputs(model, 7)
    hook = sharpened(model, 38.0)
    try:
        kw = dict(num_beams=2, min_new_tokens=2, max_new_tokens=12, length_penalty=1.0, early_stopping=False)
        modern = generate_text(model, embeds, prompts, decoding="modern", **kw)
        released = generate_text(model, embeds, prompts, decoding="released", **kw)
    finally:
        hook.remove()
    modern = [strip_pad(r) for r in modern]
    assert [len(r) for r in modern] == [2, 2, 2]
    # 4.33's finalize writes </s> after the two that stopped on it (10 and 8 tokens); the one cut at 12 has none.
    assert [len(r) for r in released] == [12, 11, 9] and [r[-1] == 2 for r in released] == [False, True, True]
    assert all(0 <= t < 32000 for r in released for t in r)  # visual ids stay suppressed


def test_released_output_writes_eos_after_hypotheses_shorter_than_the_batch_width():
    """Issue 19's case: a VQA batch of two, 5 beams, early stopping, </s> competing. 4.33's finalize makes the output
    min(longest + 1, max_length) wide and writes </s> after every shorter hypothesis: the sample that stopped on
    </s> ends with it ([..., 7165, 2] in the release), the one cut at max_new_tokens does not."""
    long_prefix = (X, Z, W, Z)
    table = {(): {X: 0.9, Y: 0.1}, (X,): {Z: 0.9, EOS: 0.1}, (X, Z): {W: 0.9, EOS: 0.1}, (X, Z, W): {Z: 0.9, EOS: 0.1},
             long_prefix: {W: 0.9, EOS: 0.1}}
    short = {(): {Y: 0.9, X: 0.1}, (Y,): {EOS: 0.95, Z: 0.05}}
    s = BeamSettings(num_beams=5, min_new_tokens=1, max_new_tokens=4, eos_token_id=EOS, length_penalty=0.0, early_stopping=True)
    beams = s.num_beams

    def step(tokens, origin, prefixes=[()] * (2 * beams)):  # noqa: B006 (the step's own state)
        if tokens is not None:
            prefixes[:] = [prefixes[int(o)] + (int(t),) for o, t in zip(origin, tokens)]
        rows = []
        for row, prefix in enumerate(prefixes):
            probs = torch.full((5,), 1e-6, dtype=torch.float64)
            for token, p in (table if row < beams else short).get(prefix, DEFAULT).items():
                probs[token] = p
            rows.append((probs / probs.sum()).log().float())
        return torch.stack(rows)

    results = beam_search(step, 2, s, "released")
    assert results[0].tokens == list(long_prefix) and not results[0].ended  # ran to max_new_tokens
    assert results[1].tokens == [Y] and results[1].ended
    assert released_output_ids(results, s.max_new_tokens, EOS) == [list(long_prefix), [Y, EOS]]
    # When every hypothesis ended early, each one is followed by </s> (the output is longest + 1 wide).
    results[0].tokens = [X, Z]
    assert released_output_ids(results, s.max_new_tokens, EOS) == [[X, Z, EOS], [Y, EOS]]
