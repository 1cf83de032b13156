"""Throughput and memory of the VQA metric: the streaming fast path against a plain per-question loop.

    .venv/bin/python benchmarks/vqa_throughput.py [--questions 200000] [--variant official]

On one synthetic VQAv2-like set (10 human answers per question drawn from a few candidates, free-form
predictions with capitals, periods, articles and number words, 1% of predictions missing) it measures,
in the same run:

1. questions/s of `score_vqa` (normalisation cached per distinct string, leave-one-out in closed form,
   predictions streamed) and of a straightforward loop calling `vqa_score` (the literal rules) on every
   question, and their ratio; the two results must be identical (asserted: overall, every breakdown, and
   per-question scores of every variant on a sample);
2. the tracemalloc peak of scoring while predictions stream from a generator, at a small and at the full
   dataset size (the dataset itself is built before tracing starts). Nothing is kept per prediction; the
   one thing sized by the dataset is a one-byte seen-flag per question (duplicate and missing detection),
   so the peak may grow by about 1 byte per question and by nothing else.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.datasets import VQADataset, VQAQuestion  # noqa: E402
from eval.vqa import VARIANTS, VQAScorer, score_vqa, vqa_score  # noqa: E402

# Candidate answers per answer type; predictions add the surface noise that normalisation must undo.
CANDIDATES = {
    "yes/no": ["yes", "no"],
    "number": ["1", "2", "3", "4", "5", "10", "0"],
    "other": ["red", "blue", "white", "dog", "cat", "tennis", "pizza", "frisbee", "kitchen", "skateboarding",
              "t-shirt", "t shirt", "baseball bat", "giraffe", "umbrella", "bathroom", "sunny", "wood", "left", "right"],
}  # fmt: skip
NUMBER_WORDS = {"0": "none", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "10": "ten"}
QUESTION_TYPES = {"yes/no": ["is the", "are there", "does the"], "number": ["how many"], "other": ["what color is the", "what is the", "what sport is"]}


def make_dataset(n: int, seed: int = 0) -> VQADataset:
    rng = random.Random(seed)
    questions = []
    for i in range(n):
        answer_type = rng.choices(["yes/no", "number", "other"], weights=[38, 12, 50])[0]
        pool = rng.sample(CANDIDATES[answer_type], k=min(3, len(CANDIDATES[answer_type])))
        answers = tuple(rng.choices(pool, weights=[6, 3, 1][: len(pool)], k=10))
        questions.append(VQAQuestion(str(1_000_000 + i), answers, answer_type, rng.choice(QUESTION_TYPES[answer_type])))
    return VQADataset("synthetic", "vqa_accuracy", questions, [])


def noisy(answer: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return answer.capitalize() + "."
    if r < 0.25:
        return "the " + answer
    if r < 0.30 and answer in NUMBER_WORDS:
        return NUMBER_WORDS[answer]
    if r < 0.35:
        return answer + "!"
    return answer


def stream_predictions(dataset: VQADataset, seed: int = 1, missing: float = 0.01):
    """(question id, answer) pairs generated on the fly, so no prediction list is ever held."""
    rng = random.Random(seed)
    for q in dataset.questions:
        if rng.random() < missing:
            continue
        guess = rng.choice(q.answers) if rng.random() < 0.8 else rng.choice(CANDIDATES[q.answer_type])
        yield q.question_id, noisy(guess, rng)


def reference_loop(dataset: VQADataset, predictions: dict[str, str], variant: str) -> dict:
    """The plain way: every question through the literal rules (`vqa_score`), exact sums per group."""
    overall, by_answer, by_question = Counter(), {}, {}
    for q in dataset.questions:
        prediction = predictions.get(q.question_id)
        score = vqa_score(prediction, q.answers, variant) if prediction is not None else Fraction(0)
        overall[score] += 1
        by_answer.setdefault(q.answer_type, Counter())[score] += 1
        by_question.setdefault(q.question_type, Counter())[score] += 1

    def pct(counts: Counter) -> float:
        return float(100 * sum((s * c for s, c in counts.items()), Fraction(0)) / sum(counts.values()))

    return {
        "accuracy": pct(overall),
        "per_answer_type": {t: pct(c) for t, c in sorted(by_answer.items())},
        "per_question_type": {t: pct(c) for t, c in sorted(by_question.items())},
    }


def traced_peak(n: int, variant: str) -> tuple[int, float]:
    """tracemalloc peak (bytes) of scoring a streamed prediction set on an n-question dataset."""
    dataset = make_dataset(n)
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = score_vqa(dataset, stream_predictions(dataset), variant)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, result.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=50_000, help="smaller size for the memory comparison")
    parser.add_argument("--variant", default="official", choices=VARIANTS)
    parser.add_argument("--check-sample", type=int, default=20_000, help="questions compared one by one per variant")
    args = parser.parse_args()
    n = args.questions

    dataset = make_dataset(n)
    predictions = dict(stream_predictions(dataset))  # the reference loop gets a dict, as a plain script would
    print(f"synthetic set: {n} questions, {n - len(predictions)} without prediction, variant={args.variant}")

    t0 = time.perf_counter()
    fast = score_vqa(dataset, predictions, args.variant)  # same input as the loop: generation is not timed
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = reference_loop(dataset, predictions, args.variant)
    t_ref = time.perf_counter() - t0

    assert fast.accuracy == ref["accuracy"], (fast.accuracy, ref["accuracy"])
    assert {t: v["accuracy"] for t, v in fast.per_answer_type.items()} == ref["per_answer_type"]
    assert {t: v["accuracy"] for t, v in fast.per_question_type.items()} == ref["per_question_type"]
    assert fast.n_missing == n - len(predictions)
    for variant in VARIANTS:  # per-question identity on a sample, every variant
        scorer = VQAScorer(variant=variant)
        for q in dataset.questions[: args.check_sample]:
            p = predictions.get(q.question_id)
            if p is not None:
                num, den = scorer.score_key(p, q.answers)
                assert Fraction(num, den) == vqa_score(p, q.answers, variant), (variant, q, p)

    print(f"accuracy {fast.accuracy:.4f}% (identical in both paths; per-question identical for {VARIANTS} on {args.check_sample})")
    print(f"fast path (score_vqa):             {n / t_fast:>12,.0f} questions/s  ({t_fast:.2f} s)")
    print(f"per-question loop (vqa_score):     {n / t_ref:>12,.0f} questions/s  ({t_ref:.2f} s)")
    print(f"speed-up: {t_ref / t_fast:.1f}x")

    peaks = {size: traced_peak(size, args.variant)[0] for size in (args.small, n)}
    for size, peak in peaks.items():
        print(f"tracemalloc peak while streaming predictions, {size:>7,} questions: {peak / 2**20:6.2f} MiB")
    growth = (peaks[n] - peaks[args.small]) / (n - args.small)
    print(f"peak ratio {n:,} / {args.small:,} questions: {peaks[n] / peaks[args.small]:.2f} (dataset ratio {n / args.small:.0f}); "
          f"growth {growth:.2f} bytes/question = the one-byte seen-flag per question (duplicate/missing detection), "
          "nothing per streamed prediction")


if __name__ == "__main__":
    main()
