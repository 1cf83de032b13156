"""GPT-4-judged benchmarks (VILA Table 5: LLaVA-Bench (In-the-Wild), MM-Vet): a judge interface, no judge.

The paper's numbers for these two come from GPT-4 rating the model's free-form answers. GPT-4 is not available here
and no local model stands in for it, so the repository ships the interface and the score arithmetic only:

    class Judge(Protocol):
        model_id: str
        def rate(self, benchmark: str, requests: list[JudgeRequest]) -> list[float | tuple[float, float]]

- "llava_bench": the judge rates the reference answer (GPT-4's own, answers_gpt4.jsonl) and the model's answer
  1-10 each, given the image's caption context, and returns (reference score, model score); the benchmark's number
  is the relative score 100 * sum(model) / sum(reference), overall and per category (conv / detail / complex).
- "mm_vet": the judge grades the model's answer against the ground truth in [0, 1]; the number is 100 * mean,
  overall and per capability (a question counts towards every capability it lists).

`python -m eval` runs the model (predictions are cached as usual) and, without a judge, writes a results.json row
whose metric is "needs_judge" and whose value is null, with a `status` saying so: no score is invented.
`eval.evaluate.evaluate_tasks(..., judge=...)` takes an implementation.

Official layouts under the data root:
    llava_bench/questions.jsonl ({question_id, image, text, category}), llava_bench/answers_gpt4.jsonl
        ({question_id, text}), llava_bench/context.jsonl ({id, image, caption}), llava_bench/images/<image>
    mm_vet/mm-vet.json ({"v1_0": {imagename, question, answer, capability: [...]}}), mm_vet/images/<imagename>
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from eval.datasets import _field, read_json
from eval.errors import EvalInputError
from eval.interface import EvalSample, EvaluationError, SampleId
from eval.runner import MetricFn, register_metric


@dataclass(frozen=True)
class JudgeRequest:
    id: SampleId
    question: str
    prediction: str  # the model's answer
    reference: str  # GPT-4's reference answer (LLaVA-Bench) or the ground truth (MM-Vet)
    context: str = ""  # LLaVA-Bench: the image's caption context the judge reads instead of the image


@runtime_checkable
class Judge(Protocol):
    model_id: str

    def rate(self, benchmark: str, requests: list[JudgeRequest]) -> list[Any]:
        """One rating per request: (reference score, model score) for "llava_bench", a score in [0, 1] for "mm_vet"."""
        ...


class NeedsJudgeError(EvaluationError):
    """A judged benchmark was scored without a judge; evaluate.py turns it into a "needs a judge" row."""


def llava_bench_scores(ratings: list[tuple[float, float]], categories: list[str]) -> dict[str, float]:
    """Relative score 100 * sum(model) / sum(reference), overall and "relative_score/<category>"."""
    if len(ratings) != len(categories) or not ratings:
        raise EvaluationError(f"{len(ratings)} ratings for {len(categories)} questions")

    def relative(pairs: list[tuple[float, float]]) -> float:
        reference = sum(r for r, _ in pairs)
        if reference <= 0:
            raise EvaluationError("the judge gave the reference answers a total score of 0")
        return 100.0 * sum(m for _, m in pairs) / reference

    out = {"relative_score": relative(ratings)}
    for category in sorted(set(categories)):
        out[f"relative_score/{category}"] = relative([p for p, c in zip(ratings, categories) if c == category])
    return out


def mm_vet_scores(grades: list[float], capabilities: list[tuple[str, ...]]) -> dict[str, float]:
    """100 * mean grade, overall and "score/<capability>" over the questions that list the capability."""
    if len(grades) != len(capabilities) or not grades:
        raise EvaluationError(f"{len(grades)} grades for {len(capabilities)} questions")
    bad = [g for g in grades if not 0.0 <= g <= 1.0]
    if bad:
        raise EvaluationError(f"MM-Vet grades must be in [0, 1], got {bad[:3]}")
    out = {"score": 100.0 * statistics.fmean(grades)}
    for cap in sorted({c for caps in capabilities for c in caps}):
        out[f"score/{cap}"] = 100.0 * statistics.fmean(g for g, caps in zip(grades, capabilities) if cap in caps)
    return out


def judged_metric(benchmark: str, judge: Judge | None) -> MetricFn:
    """A metric function that asks `judge` (None: raises NeedsJudgeError). References: (reference answer, question,
    context, category) for LLaVA-Bench; (ground truth, question, capability, ...) for MM-Vet."""

    def metric(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
        if judge is None:
            raise NeedsJudgeError(
                f"{benchmark} is scored by a GPT-4 judge (as in the paper); none is configured, so no score is "
                "reported: pass an eval.judge.Judge to eval.evaluate.evaluate_tasks(judge=...)"
            )
        ids = list(references)
        if benchmark == "llava_bench":
            requests = [JudgeRequest(i, str(references[i][1]), str(predictions.get(i, "")), str(references[i][0]),
                                     str(references[i][2])) for i in ids]  # fmt: skip
            ratings = [tuple(float(x) for x in r) for r in judge.rate(benchmark, requests)]
            return llava_bench_scores(ratings, [str(references[i][3]) for i in ids])  # type: ignore[arg-type]
        requests = [JudgeRequest(i, str(references[i][1]), str(predictions.get(i, "")), str(references[i][0])) for i in ids]
        grades = [float(g) for g in judge.rate(benchmark, requests)]
        return mm_vet_scores(grades, [tuple(str(c) for c in references[i][2:]) for i in ids])

    return metric


# =============================================================================================
# Readers


LLAVA_BENCH_QUESTIONS = "llava_bench/questions.jsonl"
LLAVA_BENCH_ANSWERS = "llava_bench/answers_gpt4.jsonl"
LLAVA_BENCH_CONTEXT = "llava_bench/context.jsonl"
LLAVA_BENCH_IMAGES = "llava_bench/images/"
MM_VET_JSON = "mm_vet/mm-vet.json"
MM_VET_IMAGES = "mm_vet/images/"


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise EvalInputError(f"{what} file not found", path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise EvalInputError(f"{what}: line {n} is not valid JSON ({err.msg})", path) from None
    return rows


def read_llava_bench(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    qpath, apath, cpath = (data_root / p for p in (LLAVA_BENCH_QUESTIONS, LLAVA_BENCH_ANSWERS, LLAVA_BENCH_CONTEXT))
    answers = {str(_field(r, "question_id", apath, "answer")): str(_field(r, "text", apath, "answer"))
               for r in read_jsonl(apath, "LLaVA-Bench GPT-4 answers")}  # fmt: skip
    captions = {str(_field(r, "image", cpath, "context")): str(_field(r, "caption", cpath, "context"))
                for r in read_jsonl(cpath, "LLaVA-Bench context")}  # fmt: skip
    samples = []
    for n, q in enumerate(read_jsonl(qpath, "LLaVA-Bench questions")):
        where = f"line {n + 1}"
        qid = str(_field(q, "question_id", qpath, where))
        if qid not in answers:
            raise EvalInputError(f"question id {qid} has no reference answer in {apath}", qpath, qid)
        image, text = str(_field(q, "image", qpath, where)), str(_field(q, "text", qpath, where))
        samples.append(EvalSample(id=qid, image=image, text=text,
                                  references=(answers[qid], text, captions.get(image, ""), str(q.get("category", "")))))  # fmt: skip
    return (samples if limit is None else samples[:limit]), data_root / LLAVA_BENCH_IMAGES


def read_mm_vet(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    path = data_root / MM_VET_JSON
    data = read_json(path, "MM-Vet questions")
    if not isinstance(data, dict):
        raise EvalInputError("MM-Vet questions must be a JSON object keyed by question id", path)
    samples = []
    for qid, q in data.items():
        where = f"question {qid!r}"
        question = str(_field(q, "question", path, where))
        capabilities = tuple(str(c) for c in _field(q, "capability", path, where))
        samples.append(EvalSample(id=str(qid), image=str(_field(q, "imagename", path, where)), text=question,
                                  references=(str(_field(q, "answer", path, where)), question, *capabilities)))  # fmt: skip
    return (samples if limit is None else samples[:limit]), data_root / MM_VET_IMAGES


@register_metric("needs_judge", variants=("GPT-4 judge (eval.judge.Judge)",))
def needs_judge(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """The registered name of the judged benchmarks' metric; scoring goes through `judged_metric` (evaluate.py)."""
    raise NeedsJudgeError("this benchmark is scored by a judge: run it through eval.evaluate.evaluate_tasks(judge=...)")
