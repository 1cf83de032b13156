"""LaVIT's released question and answer processing, as data plus the few functions that apply it.

Read from the released evaluation code (jy0205/LaVIT: `models/transform.py` LaVITQuestionProcessor,
`models/lavit_for_understanding.py` generate / predict_answers / _lemmatize, `evaluation/evaluate_vqa.py`):

- Question (before the prompt template): lower-case, delete each of . ! " ( ) * # : ; ~ (commas, question marks
  and apostrophes stay), strip trailing spaces, keep the first 50 space-separated words.
- VQA prompt "Question: {} Answer:"; the generated answer is stripped, then cut at the first "\\n", then
  "question:", "Long answer:", ",", "." (in that order; the cuts are case-sensitive).
- Lemmatisation (spaCy `en_core_web_sm`): lower-case the answer, replace NOUN and VERB tokens by their lemma,
  join tokens with single spaces. The release exits when spaCy is missing; here it is optional and the result
  records "lemmatised" or "not lemmatised".
- VizWiz: first ask 'Is the question: "{}" answerable?' (the normalised question inside, the whole string then
  put into the VQA prompt, answer processed like any answer); when the judgement contains "no" anywhere
  (case-insensitive substring, so "not" and "know" count too) the answer is "unanswerable".
- Caption: stripped, cut at the first ".".
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable

VQA_PROMPT = "Question: {} Answer:"
QUESTION_DELETED_CHARS = '.!"()*#:;~'
QUESTION_MAX_WORDS = 50
ANSWER_CUTS = ("\n", "question:", "Long answer:", ",", ".")
CAPTION_CUT = "."
ANSWERABILITY_PROMPT = 'Is the question: "{}" answerable?'
UNANSWERABLE = "unanswerable"
UNANSWERABLE_MARKER = "no"  # substring of the lower-cased judgement
SPACY_MODEL = "en_core_web_sm"
LEMMATISED, NOT_LEMMATISED = "lemmatised", "not lemmatised"

_DELETED = re.compile("[" + re.escape(QUESTION_DELETED_CHARS) + "]")


def normalize_question(question: str, max_words: int = QUESTION_MAX_WORDS) -> str:
    """The released question processor: lower-case, delete . ! " ( ) * # : ; ~, rstrip spaces, first 50 words."""
    question = _DELETED.sub("", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def cut_answer(text: str) -> str:
    """The released VQA answer cut: strip, then keep what precedes the first of each separator in turn."""
    text = text.strip()
    for separator in ANSWER_CUTS:
        text = text.split(separator)[0]
    return text


def cut_caption(text: str) -> str:
    """The released caption cut: strip, keep the text before the first '.'."""
    return text.strip().split(CAPTION_CUT)[0]


def answerability_question(question: str) -> str:
    """The VizWiz first-stage question (it then goes through the VQA prompt like any question)."""
    return ANSWERABILITY_PROMPT.format(question)


def judged_unanswerable(judgement: str) -> bool:
    return UNANSWERABLE_MARKER in judgement.lower()


def apply_answerability(answers: list[str], judgements: list[str]) -> list[str]:
    if len(answers) != len(judgements):
        raise ValueError(f"{len(answers)} answers but {len(judgements)} answerability judgements")
    return [UNANSWERABLE if judged_unanswerable(j) else a for a, j in zip(answers, judgements)]


@dataclass(frozen=True)
class Lemmatiser:
    """The released answer lemmatiser, or its absence; `status` is what results record."""

    fn: Callable[[str], str] | None
    status: str  # LEMMATISED or NOT_LEMMATISED
    reason: str = ""  # why not, when not

    def __call__(self, answers: list[str]) -> list[str]:
        return [self.fn(a) for a in answers] if self.fn is not None else list(answers)


_CACHE: dict[str, Lemmatiser] = {}
_WARNED: list[bool] = []


def load_lemmatiser(enabled: bool = True, warn: bool = False) -> Lemmatiser:
    """spaCy's `en_core_web_sm` when `enabled` and installed, else a pass-through that says why. With `warn`
    (the released/paper settings ask for lemmatisation), a missing spaCy is a warning, once per process: the
    release lemmatises, so unlemmatised scores are not comparable."""
    if not enabled:
        return Lemmatiser(None, NOT_LEMMATISED, "lemmatisation off")
    if SPACY_MODEL not in _CACHE:
        try:
            import spacy  # optional dependency
        except ImportError:
            _CACHE[SPACY_MODEL] = Lemmatiser(None, NOT_LEMMATISED, "spaCy is not installed")
        else:
            try:
                nlp = spacy.load(SPACY_MODEL)
            except OSError:
                _CACHE[SPACY_MODEL] = Lemmatiser(None, NOT_LEMMATISED, f"spaCy pipeline {SPACY_MODEL} is not installed")
            else:
                _CACHE[SPACY_MODEL] = Lemmatiser(lambda text: lemmatise_with(nlp, text), LEMMATISED)
    lemmatiser = _CACHE[SPACY_MODEL]
    if warn and lemmatiser.fn is None and not _WARNED:
        _WARNED.append(True)  # once per process: every VQA batch asks
        warnings.warn(
            f"answers are not lemmatised ({lemmatiser.reason}): the released evaluation lemmatises them with spaCy "
            f"{SPACY_MODEL} (pip install spacy && python -m spacy download {SPACY_MODEL})",
            stacklevel=2,
        )
    return lemmatiser


def lemmatise_with(nlp: Callable, text: str) -> str:
    """Released rule: lower-case, NOUN/VERB -> lemma, other tokens as written, joined by single spaces."""
    return " ".join(t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in nlp(text.lower()))
