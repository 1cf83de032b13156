"""VQA answer normalisation: the rules of the official VQA evaluator, and an optional lemmatiser.

The official evaluator (GT-Vision-Lab/VQA, `vqaEval.py`) normalises an answer in three steps, reproduced
here rule for rule, quirks included, because a "cleaner" rewrite changes scores:

1. `strip_whitespace`: newlines and tabs become spaces, then leading/trailing whitespace goes.
2. `process_punctuation`: each character of `PUNCTUATION` is deleted when it touches a space somewhere in
   the answer (``"p "`` or ``" p"`` occurs) or when the answer contains a digit-comma-digit group
   (``"1,000"``); otherwise it becomes a space (``"t-shirt"`` -> ``"t shirt"``). Both tests look at the
   *original* answer, not the partly processed one. Then periods not followed by a digit are removed
   (``"yes."`` -> ``"yes"``, ``"2.5"`` kept). Two quirks are kept: the period pattern is written
   ``(?!<=\\d)(\\.)(?!\\d)`` (a negative *lookahead* for the text ``<=d``, so it never looks behind), and
   `re.UNICODE` is passed where `Pattern.sub` takes `count`, so at most 32 periods are removed.
   The apostrophe and the colon are *not* in the list (``"it's"`` keeps its apostrophe).
3. `process_digit_article`: lower-case, split on whitespace, map the number words zero..ten and "none"
   to digits (``"none"`` -> ``"0"``), drop the articles a/an/the, expand unapostrophised contractions
   (``"dont"`` -> ``"don't"``), join with single spaces.

`normalize_answer` applies all three. Which side of the comparison gets which steps, and when, is what the
metric variants disagree on: see `eval/vqa.py`.

Lemmatisation (LaVIT's evaluation, following LAVIS, lemmatises nouns and verbs of the *prediction* with
spaCy) is not part of the official metric. It is a pluggable callable `str -> str`; `load_lemmatizer`
returns spaCy's when spaCy and its English model are installed and says why not otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# Number words the official evaluator maps to digits ("none" counts as zero there).
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES = frozenset({"a", "an", "the"})

# The official list (current GT-Vision-Lab/VQA master): note no apostrophe, colon or period here.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# Contractions written without apostrophes, as the official evaluator expands them. The table is data of
# the metric, kept entry for entry, including its oddities ("somebody'd" -> "somebodyd").
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# Kept verbatim from the official evaluator, typo included: "(?!<=\d)" is a lookahead, not a lookbehind.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call is `sub("", text, re.UNICODE)`: the flag lands in `count`, capping removals at 32.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def strip_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: the only processing every variant applies to both sides."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation rule (see the module docstring for the exact behaviour and its quirks)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if p not in out:
            continue  # replacing an absent character is a no-op either way
        if delete_all or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, _OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case; number words to digits; drop articles; expand apostrophe-less contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """All official steps: whitespace, punctuation, then digits/articles/contractions."""
    return process_digit_article(process_punctuation(strip_whitespace(text)))


# ---------------------------------------------------------------------------------------------
# Optional lemmatisation of predictions.

Lemmatizer = Callable[[str], str]


@dataclass(frozen=True)
class LemmatizerChoice:
    """Which lemmatiser a result used; recorded with every result so a lemmatised score is never mistaken."""

    requested: str  # what the user asked for: "off" or "spacy"
    active: str  # what actually ran: "off" or e.g. "spacy:en_core_web_sm"
    reason: str  # why `active` differs from `requested`, or "" when it does not
    fn: Lemmatizer | None = None  # the callable, None when off

    def record(self) -> dict[str, str]:
        return {"requested": self.requested, "active": self.active, "reason": self.reason}


def load_lemmatizer(name: str = "off", spacy_model: str = "en_core_web_sm") -> LemmatizerChoice:
    """Resolve a lemmatiser by name; "spacy" falls back to off (with the reason) when spaCy is missing.

    The spaCy lemmatiser follows LAVIS/LaVIT: nouns and verbs are replaced by their lemma, every other
    token is kept as written, tokens are joined with single spaces.
    """
    if name == "off":
        return LemmatizerChoice("off", "off", "")
    if name != "spacy":
        raise ValueError(f"unknown lemmatizer {name!r}; known: off, spacy")
    try:
        import spacy  # optional dependency, imported only on request
    except ImportError:
        return LemmatizerChoice("spacy", "off", "spacy is not installed (pip install spacy and its English model)")
    try:
        nlp = spacy.load(spacy_model, disable=["parser", "ner"])
    except OSError as err:
        return LemmatizerChoice("spacy", "off", f"spaCy model {spacy_model!r} is not installed: {err}")

    def lemmatize(text: str) -> str:
        doc = nlp(text)
        return " ".join(t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in doc)

    return LemmatizerChoice("spacy", f"spacy:{spacy_model}", "", lemmatize)
