"""VQA accuracy (VQAv2, OK-VQA, VizWiz) and GQA exact match, with an explicit metric variant.

The metric. A prediction is compared with the n (=10) human answers of its question. For each of the n
leave-one-out subsets of n-1 answers, the subset accuracy is min(1, matches/3); the question's accuracy is
the mean over the n subsets. With k answers matching: the k subsets that drop a match see k-1 matches, the
n-k others see k, so accuracy = (k*min(3, k-1) + (n-k)*min(3, k)) / (3n): k=3 gives 0.9, k>=4 gives 1.
Scores are kept as exact fractions and aggregated exactly (rounded once at the end), so the result does
not depend on the order of questions.

Variants. Which normalisation (see `eval/vqa_normalize.py` for the rules) is applied to which side differs
between the official evaluator's revisions and popular re-implementations. Read in the official
repository's history and in the re-implementations' code and pull requests:

- ``"official"`` (default): GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` at commit
  a013f00, the revision lmms-eval PR #760 (2025) links as "the original evaluation script"; the VQA
  authors confirm its behaviour in GT-Vision-Lab/VQA issue #14 (2022). Both sides get `strip_whitespace`.
  Then, *only if the human answers are not all identical*, every human answer and the prediction get
  punctuation + digit/article normalisation. When all humans wrote the same string nothing more is done
  to either side: ``"Black."`` against ten ``"black"`` scores 0 (the authors' stated reason: unanimous
  answers are often OCR text that normalisation would corrupt). OpenFlamingo's `vqa_metric.py` at
  00dc792 copies this version.
- ``"official_legacy"``: the other official revisions of the same file (07aecec, c4e6a0e, and the
  `vqa/vqaEval.py` of e6845dc). The prediction *always* gets the full normalisation; the human answers
  get `process_punctuation` only, and only when they disagree (no strip, no lower-casing, no
  digit/article step). So a prediction ``"the cat"`` becomes ``"cat"`` and never matches ten unanimous
  ``"the cat"``, while ``"Black."`` against ten ``"black"`` scores 1. (07aecec also averaged its per-type
  breakdowns over the last leave-one-out subset only and used an older punctuation list with ``:`` and
  ``'``; those are not reproduced: breakdowns use each question's full accuracy, punctuation is the
  current list.) The stored history carried no commit dates, so the order of these revisions is
  inferred: a013f00 is taken as current because 2022-2025 discussions cite it as the official code.
- ``"normalize_both"``: both sides always get the full normalisation, whatever the humans agree on.
  OpenFlamingo's later `vqa_metric.py` (e.g. commit 200a966) and lmms-eval's VQAv2 task after PR #794
  (2025) do this. Before PR #760, lmms-eval normalised the prediction twice (EvalAI processor, then the
  official steps again), a further variant not offered here.

Where they differ (each case is a test in tests/test_vqa.py), humans ["black"] * 10:
    prediction "Black."   official 0.0   official_legacy 1.0   normalize_both 1.0
and humans ["the cat"] * 10, prediction "the cat":
    official 1.0   official_legacy 0.0   normalize_both 1.0
and humans ["two"] * 4 + ["three"] * 6, prediction "2":
    official 1.0   official_legacy 0.0   normalize_both 1.0
They differ mostly on free-form generations (capitals, trailing periods, articles, number words), which
is what generative VLMs emit, so the variant is recorded with every result.

GQA is scored by exact match after `normalize_answer` on both sides (the variant does not apply and is
recorded as "exact_match"). VizWiz uses the VQA metric with "unanswerable" as an ordinary answer.

Lemmatisation (off by default) is applied to the raw prediction before any variant's normalisation, as
LAVIS/LaVIT do; which lemmatiser ran is recorded with the result.

Missing predictions score 0 and are counted in ``n_missing`` next to the accuracy (the denominator is
always every question); `strict=True` / ``--strict`` refuses instead. Predictions for unknown ids,
duplicate predictions and empty prediction sets are errors naming the file and the id.

Usage:
    python -m eval.vqa --questions Q.json --annotations A.json --predictions P.json [--variant official] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from eval.datasets import VQADataset, VQAQuestion, id_key, iter_vqa_predictions, parse_vqa_official, read_vqa_dataset
from eval.errors import EvalInputError, MissingPredictionsError
from eval.vqa_normalize import (
    LemmatizerChoice,
    load_lemmatizer,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    strip_whitespace,
)

VARIANTS = ("official", "official_legacy", "normalize_both")
DEFAULT_VARIANT = "official"
# Bumped whenever a change to this module can change a score; recorded with every result.
METRIC_VERSION = 1


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown VQA metric variant {variant!r}; known: {', '.join(VARIANTS)}")


# =============================================================================================
# The reference implementation: one question, the rules applied literally.


def comparable_forms(prediction: str, answers: Iterable[str], variant: str = DEFAULT_VARIANT) -> tuple[str, list[str]]:
    """The prediction and the human answers as the given variant compares them (see the module docstring)."""
    _check_variant(variant)
    answers = list(answers)
    if variant == "official":
        pred = strip_whitespace(prediction)
        gts = [strip_whitespace(a) for a in answers]
        if len(set(gts)) > 1:
            gts = [process_digit_article(process_punctuation(a)) for a in gts]
            pred = process_digit_article(process_punctuation(pred))
        return pred, gts
    if variant == "official_legacy":
        pred = normalize_answer(prediction)
        gts = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers
        return pred, gts
    return normalize_answer(prediction), [normalize_answer(a) for a in answers]


def vqa_score(
    prediction: str, answers: Iterable[str], variant: str = DEFAULT_VARIANT, lemmatizer: Callable[[str], str] | None = None
) -> Fraction:
    """Exact VQA accuracy of one prediction: mean over leave-one-out subsets of min(1, matches/3)."""
    answers = list(answers)
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    if lemmatizer is not None:
        prediction = lemmatizer(prediction)
    pred, gts = comparable_forms(prediction, answers, variant)
    total = 0  # sum over subsets of min(3, matches), so the score is total / (3n) exactly
    for left_out in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != left_out and gt == pred)
        total += min(3, matches)
    return Fraction(total, 3 * len(gts))


def vqa_accuracy(
    prediction: str, answers: Iterable[str], variant: str = DEFAULT_VARIANT, lemmatizer: Callable[[str], str] | None = None
) -> float:
    """VQA accuracy of one prediction in [0, 1] (float of `vqa_score`)."""
    return float(vqa_score(prediction, answers, variant, lemmatizer))


def exact_match_score(prediction: str, answer: str, lemmatizer: Callable[[str], str] | None = None) -> int:
    """GQA: 1 if the normalised prediction equals the normalised answer, else 0."""
    if lemmatizer is not None:
        prediction = lemmatizer(prediction)
    return int(normalize_answer(prediction) == normalize_answer(answer))


# =============================================================================================
# The fast path: same rules, normalisation cached per distinct string, leave-one-out in closed form.


def _closed_form_numerator(n: int, k: int) -> int:
    """Sum over the n leave-one-out subsets of min(3, matches) when k of the n answers match."""
    return k * min(3, k - 1) + (n - k) * min(3, k) if k else 0


def _percent(counts: Mapping[tuple[int, int], int]) -> float:
    """100 x the exact mean of scores given as {(num, den): number of questions}, rounded to a float once."""
    n = sum(counts.values())
    if not n:
        return float("nan")
    total = sum((Fraction(num * c, den) for (num, den), c in counts.items()), Fraction(0))
    return float(100 * total / n)


class VQAScorer:
    """Streaming scorer: `add` one question at a time, `result()` at the end; memory stays flat.

    Gives exactly the scores of `vqa_score` / `exact_match_score` (the benchmark asserts this). Speed
    comes from (1) normalising each distinct string once (bounded LRU caches: answers repeat enormously),
    (2) counting matches once and applying the leave-one-out closed form instead of n subsets, and
    (3) one counter update per question, keyed by (answer type, question type, score): every breakdown
    is summed from that small joint table at the end.
    """

    def __init__(
        self,
        metric: str = "vqa_accuracy",
        variant: str = DEFAULT_VARIANT,
        lemmatizer: LemmatizerChoice | None = None,
        cache_size: int = 1 << 16,
    ):
        _check_variant(variant)
        if metric not in ("vqa_accuracy", "exact_match"):
            raise ValueError(f"unknown metric {metric!r}; known: vqa_accuracy, exact_match")
        self.metric = metric
        self.variant = variant
        self.lemmatizer = lemmatizer or load_lemmatizer("off")
        lemma = self.lemmatizer.fn
        self._full = lru_cache(cache_size)(normalize_answer)
        self._strip = lru_cache(cache_size)(strip_whitespace)
        self._punct = lru_cache(cache_size)(process_punctuation)
        self._digit_punct = lru_cache(cache_size)(lambda s: process_digit_article(process_punctuation(s)))
        self._lemma = lru_cache(cache_size)(lemma) if lemma is not None else None
        self._joint: Counter = Counter()  # (answer type, question type, (num, den)) -> questions
        self._keys_by_n: dict[int, list[tuple[int, int]]] = {}  # n -> score key for k = 0..n matches
        self.n_missing = 0

    def score_key(self, prediction: str | None, answers: tuple[str, ...]) -> tuple[int, int]:
        """The exact score as (numerator, denominator); a missing prediction (None) scores 0."""
        if self.metric == "exact_match":
            if prediction is None:
                return (0, 1)
            if self._lemma is not None:
                prediction = self._lemma(prediction)
            return (int(self._full(prediction) == self._full(answers[0])), 1)
        n = len(answers)
        if prediction is None:
            return (0, 3 * n)
        if self._lemma is not None:
            prediction = self._lemma(prediction)
        if self.variant == "official":
            gts = tuple(map(self._strip, answers))
            pred = self._strip(prediction)
            if len(set(gts)) > 1:  # humans disagree: both sides get the full normalisation
                gts = tuple(map(self._digit_punct, gts))
                pred = self._digit_punct(pred)
        elif self.variant == "official_legacy":
            gts = tuple(map(self._punct, answers)) if len(set(answers)) > 1 else answers
            pred = self._full(prediction)
        else:
            gts = tuple(map(self._full, answers))
            pred = self._full(prediction)
        keys = self._keys_by_n.get(n)
        if keys is None:
            keys = self._keys_by_n[n] = [(_closed_form_numerator(n, k), 3 * n) for k in range(n + 1)]
        return keys[gts.count(pred)]

    def add(self, question: VQAQuestion, prediction: str | None) -> float:
        """Score one question (prediction None = missing: scores 0 and is counted); returns its accuracy."""
        key = self.score_key(prediction, question.answers)
        self._joint[(question.answer_type, question.question_type, key)] += 1
        if prediction is None:
            self.n_missing += 1
        return key[0] / key[1]

    def _breakdown(self, position: int) -> dict[str, dict[str, float]]:
        groups: dict[str, Counter] = {}
        for joint_key, count in self._joint.items():
            group = joint_key[position]
            if group is not None:
                groups.setdefault(group, Counter())[joint_key[2]] += count
        return {g: {"accuracy": _percent(c), "count": sum(c.values())} for g, c in sorted(groups.items())}

    def result(self, dataset: str = "", sources: list[str] | None = None, missing_ids: list[str] | None = None) -> VQAResult:
        overall: Counter = Counter()
        for (_, _, key), count in self._joint.items():
            overall[key] += count
        n_questions = sum(overall.values())
        return VQAResult(
            dataset=dataset,
            metric=self.metric,
            variant=self.variant if self.metric == "vqa_accuracy" else "exact_match",
            lemmatizer=self.lemmatizer.record(),
            accuracy=_percent(overall),  # percent, as the papers report
            per_answer_type=self._breakdown(0),
            per_question_type=self._breakdown(1),
            n_questions=n_questions,
            n_scored=n_questions - self.n_missing,
            n_missing=self.n_missing,
            missing_examples=(missing_ids or [])[:10],
            sources=sources or [],
            metric_version=METRIC_VERSION,
        )


@dataclass
class VQAResult:
    """One evaluation: percentages, the exact setting that produced them, counts and provenance."""

    dataset: str  # "vqav2", "okvqa", "vizwiz", "gqa" or "vqa"
    metric: str  # "vqa_accuracy" or "exact_match"
    variant: str  # the normalisation variant (see the module docstring), "exact_match" for GQA
    lemmatizer: dict[str, str]  # requested / active / reason
    accuracy: float  # percent over all n_questions (missing predictions count as 0)
    per_answer_type: dict[str, dict[str, float]]  # answer type -> {"accuracy": percent, "count": n}
    per_question_type: dict[str, dict[str, float]]  # question type -> {"accuracy": percent, "count": n}
    n_questions: int  # the denominator: every ground-truth question
    n_scored: int  # questions that had a prediction
    n_missing: int  # questions without a prediction (scored 0)
    missing_examples: list[str]  # up to 10 ids without a prediction
    sources: list[str]  # ground-truth and prediction files
    metric_version: int  # METRIC_VERSION at scoring time
    provenance: dict[str, str] = field(default_factory=dict)  # code revision and library versions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_row(self) -> dict[str, Any]:
        """One flat row: overall, per answer type (``acc/<type>``), counts and the setting."""
        row: dict[str, Any] = {
            "dataset": self.dataset, "metric": self.metric, "variant": self.variant,
            "lemmatizer": self.lemmatizer["active"], "accuracy": self.accuracy,
        }  # fmt: skip
        row.update({f"acc/{t}": v["accuracy"] for t, v in self.per_answer_type.items()})
        row.update({"n_questions": self.n_questions, "n_scored": self.n_scored, "n_missing": self.n_missing})
        return row

    def to_frame(self):
        """A one-row pandas DataFrame of `to_row()` (pandas imported here, on demand)."""
        import pandas as pd

        return pd.DataFrame([self.to_row()])


def score_vqa(
    dataset: VQADataset,
    predictions: Mapping[Any, str] | Iterable[tuple[Any, str]],
    variant: str = DEFAULT_VARIANT,
    *,
    strict: bool = False,
    lemmatizer: LemmatizerChoice | None = None,
    predictions_source: str | None = None,
) -> VQAResult:
    """Score predictions (a mapping id -> answer, or a stream of (id, answer) pairs) against a dataset.

    The stream is consumed once, each prediction scored as it arrives: besides the dataset, memory is one
    byte per question and bounded normalisation caches, however many predictions stream by. Unknown or duplicate ids and an empty set are
    `EvalInputError`s naming `predictions_source` and the id; missing ids score 0 and are counted (or,
    with `strict`, raise `MissingPredictionsError`).
    """
    where = predictions_source or "predictions"
    pairs = predictions.items() if isinstance(predictions, Mapping) else predictions
    scorer = VQAScorer(dataset.metric, variant, lemmatizer)
    seen = bytearray(len(dataset))  # one byte per question: duplicate and missing detection
    questions, index = dataset.questions, dataset.index
    n_given = 0
    for raw_id, answer in pairs:  # each prediction is scored as it arrives and then dropped
        key = raw_id if type(raw_id) is str else id_key(raw_id, where, "prediction id")
        pos = index.get(key)
        if pos is None:
            raise EvalInputError(f"prediction for question id {raw_id!r}, which is not in the ground truth ({dataset.name})", where, raw_id)
        if seen[pos]:
            raise EvalInputError(f"question id {raw_id!r} has more than one prediction", where, raw_id)
        if not isinstance(answer, str):
            raise EvalInputError(f"the answer for question id {raw_id!r} must be a string, got {answer!r}", where, raw_id)
        seen[pos] = 1
        scorer.add(questions[pos], answer)
        n_given += 1
    if n_given == 0:
        raise EvalInputError("the prediction set is empty", where)
    n_missing = len(dataset) - n_given
    examples = [questions[pos].question_id for pos in _first_zeros(seen, 10)]
    if strict and n_missing:
        raise MissingPredictionsError(where, examples, n_missing, len(dataset))
    if n_missing:
        for pos in _first_zeros(seen, n_missing):
            scorer.add(questions[pos], None)
    sources = dataset.sources + ([predictions_source] if predictions_source else [])
    return scorer.result(dataset.name, sources, examples)


def _first_zeros(flags: bytearray, limit: int) -> Iterable[int]:
    """Positions of the first `limit` zero bytes, without materialising them all."""
    pos, found = flags.find(0), 0
    while pos != -1 and found < limit:
        yield pos
        found += 1
        pos = flags.find(0, pos + 1)


def evaluate_vqa(
    questions: Any,
    annotations: Any,
    predictions: Any,
    variant: str = DEFAULT_VARIANT,
    *,
    strict: bool = False,
    lemmatizer: LemmatizerChoice | None = None,
    dataset: str = "vqa",
) -> VQAResult:
    """Score official-format objects already in memory (parsed questions/annotations JSON, results list).

    `predictions` is the VQA results list ``[{"question_id", "answer"}]`` or a mapping id -> answer.
    """
    data = parse_vqa_official(questions, annotations, "questions", "annotations", dataset)
    data.sources = []
    if isinstance(predictions, list):
        pairs = []
        for i, record in enumerate(predictions):
            if not isinstance(record, dict) or "question_id" not in record or "answer" not in record:
                raise EvalInputError(f"predictions[{i}] must be {{'question_id', 'answer'}}, got {str(record)[:80]}")
            pairs.append((record["question_id"], record["answer"]))
        predictions = pairs
    return score_vqa(data, predictions, variant, strict=strict, lemmatizer=lemmatizer)


# =============================================================================================
# Command line


def format_table(result: VQAResult) -> str:
    from tabulate import tabulate

    head = (
        f"{result.dataset}: {result.metric}, variant={result.variant}, lemmatizer={result.lemmatizer['active']}"
        + (f" (requested {result.lemmatizer['requested']}: {result.lemmatizer['reason']})" if result.lemmatizer["reason"] else "")
    )
    rows = [["overall", f"{result.accuracy:.2f}", result.n_questions]]
    rows += [[f"answer type: {t}", f"{v['accuracy']:.2f}", v["count"]] for t, v in result.per_answer_type.items()]
    rows += [[f"question type: {t}", f"{v['accuracy']:.2f}", v["count"]] for t, v in result.per_question_type.items()]
    counts = f"scored {result.n_scored} of {result.n_questions} questions; missing predictions (scored 0): {result.n_missing}"
    if result.n_missing:
        counts += f", e.g. {', '.join(result.missing_examples[:5])}"
    return "\n".join([head, tabulate(rows, headers=["", "accuracy (%)", "questions"]), counts])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.vqa", description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", help="questions file (VQAv2/OK-VQA questions json; GQA testdev_balanced_questions.json)")
    p.add_argument("--annotations", help="annotations file (VQAv2/OK-VQA annotations json; VizWiz val.json)")
    p.add_argument("--predictions", required=True, help='results file: [{"question_id", "answer"}] (.json) or JSON lines (.jsonl)')
    p.add_argument("--dataset", default="auto", choices=["auto", "vqav2", "okvqa", "vizwiz", "gqa"], help="default: from the files")
    p.add_argument("--variant", default=DEFAULT_VARIANT, choices=VARIANTS, help="normalisation variant (see module docstring)")
    p.add_argument("--lemmatize", default="off", choices=["off", "spacy"], help="lemmatise predictions first (off if spaCy is missing)")
    p.add_argument("--strict", action="store_true", help="refuse when some questions have no prediction (default: score 0, count)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dataset = read_vqa_dataset(args.questions, args.annotations, args.dataset)
        lemmatizer = load_lemmatizer(args.lemmatize)
        result = score_vqa(
            dataset, iter_vqa_predictions(args.predictions), args.variant,
            strict=args.strict, lemmatizer=lemmatizer, predictions_source=args.predictions,
        )  # fmt: skip
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from harness.io import provenance

    result.provenance = provenance()
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
