"""Accuracy of a mini-world VQA evaluation by question form: which phrasings a model answers, and which it inverts.

A form is the question with its colour and shape words replaced ("is no {shape} present?"), split by the right
answer. Each group is scored with the task's own metric; "said yes" is the share of predictions that are "yes"
after the metric's normalisation, so a form answered as if its negation were not there shows up as a group whose
"said yes" is the opposite of its answer. Any model's saved predictions of `mini_vqa` (LaVIT's or VILA's):

    python -m reproduce.vqa_forms runs/<run>/eval/mini_vqa/predictions.jsonl --world runs/miniworld [--yes-no-only]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from harness.miniworld import COLORS, SHAPES

_COLOUR_WORDS = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_SHAPE_WORDS = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")


def question_form(question: str) -> str:
    """The question lower-cased with its colour and shape words replaced: "is no {shape} present?"."""
    return _SHAPE_WORDS.sub("{shape}", _COLOUR_WORDS.sub("{colour}", question.strip().lower()))


def accuracy_by_form(samples, predictions: dict, task: str = "mini_vqa", yes_no_only: bool = False):
    """DataFrame (form, answer, questions, accuracy %, said yes %), most frequent group first, one row per (question
    form, right answer) of `samples` (the task's EvalSamples) that has a prediction; the metric is the task's."""
    import pandas as pd

    from eval.runner import get_metric, task_metric
    from eval.tasks import get_task
    from eval.vqa import comparable_forms

    spec = get_task(task)
    variant = get_metric(spec.metric).resolve_variant(spec.metric, spec.variant)  # how the metric normalises answers
    groups: dict[tuple[str, str], list] = {}
    for s in samples:
        if s.id in predictions and (not yes_no_only or s.references[0] in ("yes", "no")):
            groups.setdefault((question_form(s.text), str(s.references[0])), []).append(s)
    rows = []
    for (form, answer), group in groups.items():
        refs = {s.id: list(s.references) for s in group}
        preds = {s.id: predictions[s.id] for s in group}
        accuracy = task_metric(spec, refs, preds)[spec.headline]
        # normalised as the metric compares an answer to yes / no (two answers: punctuation and case go)
        said_yes = sum(comparable_forms(p, ["yes", "no"], variant)[0] == "yes" for p in preds.values())
        rows.append({"form": form, "answer": answer, "questions": len(group), "accuracy": accuracy,
                     "said yes": 100.0 * said_yes / len(group)})  # fmt: skip
    columns = ["form", "answer", "questions", "accuracy", "said yes"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["questions", "form", "answer"], ascending=[False, True, True], ignore_index=True)


def _main(argv: list[str] | None = None) -> int:
    from eval.cache import saved_predictions
    from eval.tasks import get_task
    from harness.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m reproduce.vqa_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="an evaluation's predictions.jsonl of the task")
    parser.add_argument("--world", default="runs/miniworld", help="the mini world's root (its eval/ questions)")
    parser.add_argument("--task", default="mini_vqa", help="the VQA task the predictions answer")
    parser.add_argument("--yes-no-only", action="store_true", help="only the questions whose answer is yes or no")
    args = parser.parse_args(argv)
    predictions = saved_predictions(args.predictions)
    samples, _ = get_task(args.task).read(Path(args.world), None)
    frame = accuracy_by_form(samples, predictions, args.task, args.yes_no_only)
    if frame.empty:
        raise InputError(f"{args.predictions}: no prediction for any {args.task} question under {args.world}")
    print(frame.to_markdown(index=False, floatfmt=".1f"))
    scored = frame["questions"].sum()
    overall = (frame["accuracy"] * frame["questions"]).sum() / scored
    print(f"\n{scored} questions in {len(frame)} groups; accuracy {overall:.1f} (question-weighted)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m reproduce.vqa_forms`: bad input is one `error:` line and exit code 2 (`harness.errors.run_cli`)."""
    from harness.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
