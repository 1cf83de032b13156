"""The released question/answer processing (model/lavit/released_processing.py) and how LavitEvalAdapter applies
it from the task's settings: question normalisation, answer and caption cuts, the VizWiz answerability step,
optional lemmatisation, keep-mask selection and the settings record; and the Table 1 tasks' LaVIT settings
(eval/tasks.py) are that protocol."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from model.lavit import released_processing as rp
from model.lavit.configuration import lavit_tiny
from model.lavit.eval_adapter import LavitEvalAdapter
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.vocabulary import build_byte_text_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def test_question_normalisation():
    assert rp.normalize_question("What's the COLOR (of) the cat?!") == "what's the color of the cat?"
    assert rp.normalize_question('Is it "red"; or #blue~: yes*. ') == "is it red or blue yes"
    assert rp.normalize_question("Where, exactly?") == "where, exactly?"  # commas and '?' stay
    assert rp.normalize_question("  Leading spaces stay") == "  leading spaces stay"  # only trailing ones go
    long = " ".join(f"w{i}" for i in range(60))
    assert rp.normalize_question(long) == " ".join(f"w{i}" for i in range(50))


@pytest.mark.parametrize(
    "generated, answer",
    [
        (" two, maybe three.", "two"),
        ("yes\nquestion: more", "yes"),
        ("red Long answer: it is red", "red "),  # the cuts come after the strip: the space stays
        ("Question: what?", "Question: what?"),  # the cuts are case-sensitive
        ("blue question: is it", "blue "),
        ("3.5 meters", "3"),
        ("  a dog\n, on a couch", "a dog"),
        ("", ""),
    ],
)
def test_answer_cuts(generated, answer):
    assert rp.cut_answer(generated) == answer


def test_caption_cut():
    assert rp.cut_caption("  a dog on a couch. it sleeps.") == "a dog on a couch"
    assert rp.cut_caption("no period") == "no period"


def test_answerability_rule_is_a_substring_test():
    assert rp.answerability_question("what is this") == 'Is the question: "what is this" answerable?'
    for judgement in ("no", "No", "not really", "i don't know", "snow"):
        assert rp.judged_unanswerable(judgement), judgement
    for judgement in ("yes", "", "it is"):
        assert not rp.judged_unanswerable(judgement), judgement
    assert rp.apply_answerability(["red", "two"], ["yes", "no"]) == ["red", "unanswerable"]
    with pytest.raises(ValueError, match="2 answers but 1"):
        rp.apply_answerability(["a", "b"], ["yes"])


class FakeToken:
    def __init__(self, text, pos, lemma):
        self.text, self.pos_, self.lemma_ = text, pos, lemma


def test_released_lemmatisation_rule():
    """Lower-case first, then NOUN/VERB -> lemma, other tokens as written, single spaces."""
    seen = []

    def nlp(text):
        seen.append(text)
        table = {"dogs": ("NOUN", "dog"), "are": ("AUX", "be"), "running": ("VERB", "run"), "two": ("NUM", "two")}
        return [FakeToken(w, *table.get(w, ("X", w + "!"))) for w in text.split()]

    assert rp.lemmatise_with(nlp, "Two Dogs are Running") == "two dog are run"
    assert seen == ["two dogs are running"]


def test_lemmatiser_status_and_warning():
    assert rp.load_lemmatiser(False).status == rp.NOT_LEMMATISED
    lemmatiser = rp.load_lemmatiser(True)
    try:
        import spacy

        spacy.load(rp.SPACY_MODEL)
        installed = True
    except (ImportError, OSError):
        installed = False
    if installed:
        assert lemmatiser.status == rp.LEMMATISED
        assert lemmatiser(["Dogs running"]) == ["dog run"]
        return
    assert lemmatiser.status == rp.NOT_LEMMATISED and "not installed" in lemmatiser.reason
    assert lemmatiser(["Dogs"]) == ["Dogs"]
    rp._WARNED.clear()
    with pytest.warns(UserWarning, match="not lemmatised"):
        rp.load_lemmatiser(True, warn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rp.load_lemmatiser(True, warn=True)  # once per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rp.load_lemmatiser(False, warn=True)  # off on purpose: no warning


# --- the adapter ----------------------------------------------------------------------------------------------

# Tiny-sized stand-ins of the released settings (eval/tasks.py LAVIT_*): every key the adapter reads is given.
TEXT = {"num_beams": 2, "min_new_tokens": 2, "max_new_tokens": 4, "length_penalty": 0.0, "early_stopping": True,
        "decoding": "released", "selection": "gumbel", "seed": 0}  # fmt: skip
VQA = {**TEXT, "lemmatize": False}
RELEASED_QUESTIONS = {"question_template": rp.VQA_PROMPT, "question_processing": "released"}


@pytest.fixture(scope="module")
def runner() -> LavitEvalAdapter:
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    return LavitEvalAdapter(model, build_byte_text_tokenizer(), model_id="lavit-tiny-random")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_vizwiz_step_prompts_and_override(runner, monkeypatch):
    calls = []

    def scripted(imgs, prompts, settings):
        calls.append(list(prompts))
        if "answerable" in prompts[0]:
            return ["yes", "no"]
        return ["red", "two"]

    monkeypatch.setattr(runner, "_answer_prompts", scripted)
    out = runner.answer(
        images(2), ["What is THIS?!", "How many (cats)?"], **VQA, **RELEASED_QUESTIONS,
        answerability_prompt=rp.ANSWERABILITY_PROMPT,
    )  # fmt: skip
    assert out == ["red", "unanswerable"]
    assert calls == [
        ["Question: what is this? Answer:", "Question: how many cats? Answer:"],
        [
            'Question: Is the question: "what is this?" answerable? Answer:',
            'Question: Is the question: "how many cats?" answerable? Answer:',
        ],
    ]
    calls.clear()
    runner.answer(images(1), ["Is it RED?"], **VQA, question_template=rp.VQA_PROMPT, question_processing="none")
    assert calls == [["Question: Is it RED? Answer:"]]
    calls.clear()
    runner.answer(images(1), ["Question: Is it RED? Answer:"], **VQA)  # no template: used as given
    assert calls == [["Question: Is it RED? Answer:"]]
    with pytest.raises(ValueError, match="need question_template"):
        runner.answer(images(1), ["q"], **VQA, answerability_prompt=rp.ANSWERABILITY_PROMPT)
    with pytest.raises(ValueError, match="need question_template"):
        runner.answer(images(1), ["Question: q Answer:"], **VQA, question_processing="released")
    with pytest.raises(ValueError, match=r"question_processing=None \(required with question_template\)"):
        runner.answer(images(1), ["q"], **VQA, question_template=rp.VQA_PROMPT)


def test_answers_are_cut_and_generated_in_both_modes(runner):
    for decoding in ("released", "modern"):
        out = runner.answer(images(2), ["Question: what is it? Answer:"] * 2, **{**VQA, "decoding": decoding})
        assert len(out) == 2 and all(rp.cut_answer(a) == a for a in out)
    caption = {**TEXT, "length_penalty": 1.0, "early_stopping": False}
    assert len(runner.caption(images(1), "", **caption)) == 1
    with pytest.raises(ValueError, match="unknown decoding 'beam'"):
        runner.caption(images(1), "", **{**caption, "decoding": "beam"})
    with pytest.raises(ValueError, match=r"answer: generation settings missing \['lemmatize'\]"):
        runner.answer(images(1), ["q"], **TEXT)


def test_keep_mask_selection_follows_the_task(runner):
    from model.lavit.eval_adapter import SELECTIONS

    img = images(1)

    def embeds(selection, seed):
        return runner._image_embeds(img, seed, SELECTIONS[selection])[0]

    assert runner.understanding_selection == "deterministic"  # score_text / multi-modal prompts only
    assert torch.equal(embeds("argmax", 0), embeds("argmax", 1))
    assert torch.equal(embeds("gumbel", 3), embeds("gumbel", 3))
    draws = [embeds("gumbel", s) for s in range(6)]
    assert any(d.shape != draws[0].shape or not torch.equal(d, draws[0]) for d in draws)  # the mask follows the seed
    with pytest.raises(ValueError, match=r"selection='top-k'; expected one of \['argmax', 'gumbel'\]"):
        runner.caption(img, "", **{**TEXT, "selection": "top-k"})
    # The task's seed reaches the keep mask: two seeds whose masks differ give different inputs, same seed same.
    a, b = next((s, t) for s in range(6) for t in range(s + 1, 6)
                if draws[s].shape != draws[t].shape or not torch.equal(draws[s], draws[t]))  # fmt: skip
    calls = []
    original = runner._image_embeds
    runner._image_embeds = lambda i, seed, sel=None: calls.append((seed, sel)) or original(i, seed, sel)
    try:
        runner.caption(img, "", **{**TEXT, "seed": a})
        runner.caption(img, "", **{**TEXT, "selection": "argmax", "seed": b})
    finally:
        del runner._image_embeds
    assert calls == [(a, "sampled"), (b, "deterministic")]


def test_gumbel_keep_mask_of_an_image_does_not_depend_on_its_batch(runner):
    """Noise per image (seeded by the task seed and the pixels): re-batching or resuming draws the same masks."""
    from model.lavit.eval_adapter import SELECTIONS

    imgs = images(5)
    together = runner._image_embeds(imgs, 7, SELECTIONS["gumbel"])
    alone = [runner._image_embeds([i], 7, SELECTIONS["gumbel"])[0] for i in imgs]
    reordered = runner._image_embeds(imgs[::-1], 7, SELECTIONS["gumbel"])[::-1]
    for a, b, c in zip(together, alone, reordered):
        assert a.shape == b.shape == c.shape and torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    assert len({tuple(e.shape) for e in together}) > 1 or runner.model.visual_tokenizer.cfg.fixed_length  # masks differ by image


def test_settings_record(runner):
    released = {**VQA, "lemmatize": True, "seed": 7, **RELEASED_QUESTIONS, "answerability_prompt": rp.ANSWERABILITY_PROMPT}
    vqa = runner.text_settings("vqa", **released)
    assert vqa["decoding"] == "released" and vqa["selection"] == "gumbel" and vqa["selection_seed"] == 7
    assert vqa["question_processing"] == "released" and vqa["answerability_step"] is True
    assert vqa["question_template"] == rp.VQA_PROMPT
    assert vqa["lemmatisation"] == rp.load_lemmatiser(True).status
    cap = runner.text_settings("caption", **{**TEXT, "decoding": "modern", "selection": "argmax"})
    assert cap == {"decoding": "modern", "selection": "argmax"}  # no seed: argmax does not use one
    plain = runner.text_settings("vqa", **VQA)
    assert plain["lemmatisation"] == rp.NOT_LEMMATISED and plain["question_processing"] == "none"
    assert plain["answerability_step"] is False and plain["question_template"] is None
    with pytest.raises(ValueError, match="missing"):
        runner.text_settings("vqa", decoding="released")


# --- the tasks' LaVIT settings ------------------------------------------------------------------------------


def test_table1_tasks_run_the_released_protocol():
    from eval import tasks as T

    table1 = ["coco_karpathy_test", "nocaps_val", "flickr30k_test", "vqav2_val", "okvqa_val", "gqa_testdev", "vizwiz_val"]
    for name in table1:
        spec = T.get_task(name)
        task = spec.eval_task("lavit")
        assert spec.version == 2
        g = task.generation
        assert (g["decoding"], g["selection"], g["seed"]) == ("released", "gumbel", 0), name
        if spec.kind == "vqa":
            assert task.prompt == "{text}"  # raw questions: the adapter normalises and templates them
            assert g["question_template"] == rp.VQA_PROMPT and g["question_processing"] == "released"
            assert g["lemmatize"] is True
            assert g.get("answerability_prompt") == (rp.ANSWERABILITY_PROMPT if name == "vizwiz_val" else None)
        else:
            assert task.prompt == ""
    for name in ("mini_caption", "mini_vqa"):
        spec = T.get_task(name)
        g = spec.eval_task("lavit").generation
        assert spec.version == 4 and (g["decoding"], g["selection"], g["seed"]) == ("released", "gumbel", 0)
        assert g.get("lemmatize", False) is False and "answerability_prompt" not in g
        # The released minimum lengths count LLaMA pieces; the mini world's BPE needs only a non-empty output.
        assert g["min_new_tokens"] == (2 if name == "mini_caption" else 1)
    # Every LaVIT setting is one the adapter reads (it refuses unknown and missing ones).
    adapter = LavitEvalAdapter.__new__(LavitEvalAdapter)
    adapter.seed = 0
    for name in table1 + ["mini_caption", "mini_vqa"]:
        spec = T.get_task(name)
        record = adapter.text_settings(spec.kind, **spec.eval_task("lavit").generation)
        assert record["decoding"] == "released"
