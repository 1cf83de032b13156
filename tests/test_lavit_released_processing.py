"""The released question/answer processing (model/lavit/released_processing.py) and how LavitRunner applies it:
question normalisation, answer and caption cuts, the VizWiz answerability step, optional lemmatisation, keep-mask
selection and the settings record."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from model.lavit import released_processing as rp
from model.lavit.configuration import lavit_tiny
from model.lavit.generation import LavitRunner
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.vocabulary import build_byte_text_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# --- the runner -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> LavitRunner:
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    return LavitRunner(model, build_byte_text_tokenizer(), model_id="lavit-tiny-random")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_vizwiz_step_prompts_and_override(runner, monkeypatch):
    calls = []

    def scripted(imgs, prompts, generation):
        calls.append(list(prompts))
        if "answerable" in prompts[0]:
            return ["yes", "no"]
        return ["red", "two"]

    monkeypatch.setattr(runner, "_answer_prompts", scripted)
    out = runner.answer(
        images(2),
        ["What is THIS?!", "How many (cats)?"],
        question_template=rp.VQA_PROMPT,
        answerability_prompt=rp.ANSWERABILITY_PROMPT,
    )
    assert out == ["red", "unanswerable"]
    assert calls == [
        ["Question: what is this? Answer:", "Question: how many cats? Answer:"],
        [
            'Question: Is the question: "what is this?" answerable? Answer:',
            'Question: Is the question: "how many cats?" answerable? Answer:',
        ],
    ]
    calls.clear()
    runner.answer(images(1), ["Is it RED?"], question_template=rp.VQA_PROMPT, question_processing="none")
    assert calls == [["Question: Is it RED? Answer:"]]
    calls.clear()
    runner.answer(images(1), ["Question: Is it RED? Answer:"])  # no template: used as given
    assert calls == [["Question: Is it RED? Answer:"]]
    with pytest.raises(ValueError, match="needs question_template"):
        runner.answer(images(1), ["q"], answerability_prompt=rp.ANSWERABILITY_PROMPT)


def test_answers_are_cut_and_generated_in_both_modes(runner):
    for decoding in ("released", "modern"):
        out = runner.answer(images(2), ["Question: what is it? Answer:"] * 2, decoding=decoding, max_new_tokens=4)
        assert len(out) == 2 and all(rp.cut_answer(a) == a for a in out)
    assert runner.caption(images(1), min_new_tokens=2, max_new_tokens=6) == runner.caption(
        images(1), min_new_tokens=2, max_new_tokens=6, decoding="released"
    )


def test_keep_mask_selection(runner):
    img = images(1)

    def embeds(**generation):
        return runner._image_embeds(img, generation)[0]

    assert runner.understanding_selection == "sampled"  # the released default: hard Gumbel
    assert torch.equal(embeds(selection="argmax", seed=0), embeds(selection="argmax", seed=1))
    assert torch.equal(embeds(selection="gumbel", seed=3), embeds(selection="gumbel", seed=3))
    draws = [embeds(selection="gumbel", seed=s) for s in range(6)]
    assert any(d.shape != draws[0].shape or not torch.equal(d, draws[0]) for d in draws)  # the mask follows the seed
    with pytest.raises(ValueError, match="argmax' or 'gumbel"):
        embeds(selection="top-k")


def test_settings_record(runner):
    vqa = runner.text_settings(
        "vqa", question_template=rp.VQA_PROMPT, answerability_prompt=rp.ANSWERABILITY_PROMPT, seed=7
    )
    assert vqa["decoding"] == "released" and vqa["selection"] == "gumbel" and vqa["selection_seed"] == 7
    assert vqa["question_processing"] == "released" and vqa["answerability_step"] is True
    assert vqa["lemmatisation"] == rp.load_lemmatiser(True).status
    cap = runner.text_settings("caption", decoding="modern", selection="argmax")
    assert cap == {"decoding": "modern", "selection": "argmax"}
    assert runner.text_settings("vqa", lemmatize=False)["lemmatisation"] == rp.NOT_LEMMATISED
    assert runner.text_settings("vqa")["question_processing"] == "none"
