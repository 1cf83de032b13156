"""The task registry: what an evaluation task is (`TaskSpec`), and every task by name.

`eval/tasks.py` declares the tasks (the benchmarks' specs, and their in-context and text-only variants built by
`eval/fewshot.py` and `eval/text_benchmarks.py`) and is the module to import for the full list; this module holds
only the spec type and the lookup, so the modules that build specs sit below the one that registers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eval.errors import EvalInputError
from eval.interface import EvalSample, EvalTask
from eval.runner import MetricFn

Reader = Callable[[Path, "int | None"], "tuple[list[EvalSample], Path]"]
MetricBuilder = Callable[[Path, Path], MetricFn]  # (data_root, task output dir) -> metric function

KINDS = ("caption", "vqa", "t2i", "multiple_choice", "lm_eval", "interleaved")


class TaskDataError(EvalInputError):
    """A task's expected file is not under the data root; the message names the task, the file and the layout."""


@dataclass(frozen=True)
class TaskSpec:
    name: str  # `python -m eval NAME`; also the output sub-folder and the results row's task
    version: int  # bumped when the prompt, decoding, reader or metric change
    kind: str  # caption / vqa / t2i / multiple_choice / lm_eval
    description: str  # one line: benchmark, split, metric, as the paper reports it
    split: str  # the dataset split evaluated ("test", "val", "testdev", ...)
    files: tuple[str, ...]  # paths under the data root the task needs (files, or folders ending in "/")
    layout: str  # the data-root layout, for error messages and --help
    metric: str  # a name in eval.runner.METRICS (lm_eval tasks: "mmlu_accuracy", computed by eval.mmlu)
    headline: str  # the metric value the paper reports (a key of the metric's output)
    reader: Reader | None = None  # (data_root, limit) -> (samples, image_root); None for lm_eval tasks
    variant: str = ""  # the metric's variant ("" = its default)
    prompt: str = ""  # caption: the instruction; vqa/t2i: template with a {text} field
    generation: dict[str, Any] = field(default_factory=dict)  # default decoding (keyword args of the model method)
    generation_by_family: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> keys overriding `generation`
    prompt_by_family: dict[str, str] = field(default_factory=dict)  # family -> prompt replacing `prompt`
    metric_builder: MetricBuilder | None = None  # for metrics that need more than references and predictions
    lm_eval: dict[str, Any] = field(default_factory=dict)  # lm_eval tasks: data folder, num_fewshot, ...
    judge: str = ""  # a GPT-4-judged benchmark ("llava_bench", "mm_vet"): scored by an eval.judge.Judge, if one is given

    def generation_for(self, family: str | None) -> dict[str, Any]:
        return {**self.generation, **self.generation_by_family.get(family or "", {})}

    def prompt_for(self, family: str | None) -> str:
        return self.prompt_by_family.get(family or "", self.prompt)

    def eval_task(self, family: str | None = None) -> EvalTask:
        """The runner's EvalTask for a model family (its decoding settings; lm_eval tasks get kind multiple_choice)."""
        kind = "multiple_choice" if self.kind == "lm_eval" else self.kind
        generation = {} if self.kind == "lm_eval" else self.generation_for(family)
        return EvalTask(
            name=self.name,
            kind=kind,  # type: ignore[arg-type]
            metric=self.metric,
            variant=self.variant,
            prompt=self.prompt_for(family),
            generation=generation,
            version=self.version,
        )

    def missing_files(self, data_root: str | Path) -> list[str]:
        root = Path(data_root)
        return [f for f in self.files if not ((root / f).is_dir() if f.endswith("/") else (root / f).is_file())]

    def check_files(self, data_root: str | Path) -> None:
        """Raise `TaskDataError` naming the first expected file that is not under `data_root`."""
        missing = self.missing_files(data_root)
        if missing:
            raise TaskDataError(f"task {self.name} expects {missing[0]} under {data_root} (layout: {self.layout})")

    def read(self, data_root: str | Path, limit: int | None = None) -> tuple[list[EvalSample], Path]:
        """The task's samples (the first `limit` in file order) and the folder their image paths are relative to."""
        if self.reader is None:
            raise EvalInputError(f"task {self.name} ({self.kind}) has no sample reader; it runs through lm-eval")
        if limit is not None and limit < 1:
            raise EvalInputError(f"--limit must be >= 1, got {limit}")
        self.check_files(data_root)
        return self.reader(Path(data_root), limit)


TASKS: dict[str, TaskSpec] = {}


def register_task(make: Callable[[], TaskSpec]) -> Callable[[], TaskSpec]:
    """Decorator on a function returning a TaskSpec; registers it under its name (duplicates are rejected)."""
    spec = make()
    if spec.name in TASKS:
        raise ValueError(f"evaluation task {spec.name!r} is registered twice")
    if spec.kind not in KINDS:
        raise ValueError(f"task {spec.name!r}: kind {spec.kind!r} is not one of {KINDS}")
    if (spec.reader is None) != (spec.kind == "lm_eval"):
        raise ValueError(f"task {spec.name!r}: every kind but lm_eval needs a reader")
    TASKS[spec.name] = spec
    return make


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown evaluation task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def parse_task_list(text: str) -> list[TaskSpec]:
    """"a,b,c" -> specs; an unknown name lists the valid ones; duplicates are dropped (first kept)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise KeyError(f"no task given; tasks: {', '.join(TASKS)}")
    return [get_task(n) for n in dict.fromkeys(names)]


def describe_tasks() -> str:
    """One block per task: name, version, description and the files it expects (for --help)."""
    lines = []
    for spec in TASKS.values():
        lines.append(f"  {spec.name} (v{spec.version}, {spec.kind}): {spec.description}")
        lines.append(f"      files: {', '.join(spec.files)}")
    return "\n".join(lines)
