"""Evaluate one checkpoint on registered tasks: the library behind `python -m eval` (and the table machinery).

    frame = evaluate_tasks(["nocaps_val", "vqav2_val"], "lavit", CHECKPOINT, DATA_ROOT, OUTPUT)

In order:
1. every task's expected files are checked and its samples read (image files included) *before* the model is
   loaded: bad data costs a second, not a model load (`TaskDataError` / `EvalInputError` naming the file);
2. the model is loaded once through its family (`model/families.py`), unless `loaded=` is given;
3. each task runs through `eval.runner.evaluate` (resumable per-sample caches in OUTPUT/TASK/, sharded over the
   ranks of a torch.distributed job) or, for `lm_eval` tasks, lm-eval on rank 0; OUTPUT/TASK/results.json gets
   the runner's rows plus the run's identity (family, checkpoint, split, limit, headline metric); a caption /
   vqa adapter with a `text_settings` method has what it ran recorded in each row's config (`text_settings`);
4. a task whose results.json already has the same identity (task version and settings, model id, dataset hash,
   limit, the adapter's text settings) is reused, not recomputed;
5. OUTPUT/results.csv is rebuilt from every OUTPUT/*/results.json.

Under torchrun (RANK / WORLD_SIZE in the environment) the process group is initialised here; every rank returns,
rank 0 with the rows and the others with an empty frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from eval.cache import normalize
from eval.interface import EvalSample
from eval.tasks import TaskSpec, get_task, parse_task_list
from harness.runlock import eval_lock

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Columns added to the runner's rows, and what identifies a finished task (with the task settings in "config").
RUN_COLUMNS = ("family", "checkpoint", "split", "limit", "headline", "reused")
TABLE_COLUMNS = ["task", "metric", "value", "n_denominator", "n_missing", "task_version", "headline", "reused"]


@dataclass
class PreparedTask:
    spec: TaskSpec
    samples: list[EvalSample]  # empty for lm_eval tasks
    image_root: Path | None
    dataset_hash: str


def _files_hash(folder: Path, pattern: str = "*/*.csv") -> str:
    """sha256 over (relative path, sha256 of bytes) of the files under `folder`, sorted by path."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def resolve_tasks(tasks: str | Sequence[str | TaskSpec]) -> list[TaskSpec]:
    if isinstance(tasks, str):
        return parse_task_list(tasks)
    return [t if isinstance(t, TaskSpec) else get_task(t) for t in tasks]


def check_data(specs: Sequence[TaskSpec], data_root: str | Path) -> None:
    """Every task's expected files exist under data_root (raises TaskDataError naming the first missing one)."""
    for spec in specs:
        spec.check_files(data_root)


def prepare_tasks(specs: Sequence[TaskSpec], data_root: str | Path, limit: int | None = None) -> list[PreparedTask]:
    """Check files, read samples and hash each dataset; no model is needed (and none is loaded)."""
    from eval.runner import dataset_hash, validate_samples

    data_root = Path(data_root)
    check_data(specs, data_root)
    prepared = []
    for spec in specs:
        if spec.kind == "lm_eval" and spec.lm_eval.get("runner") == "text_benchmarks":
            from eval import text_benchmarks

            prepared.append(PreparedTask(spec, [], None, text_benchmarks.files_hash(spec, data_root)))
            continue
        if spec.kind == "lm_eval":
            from eval import mmlu

            folder = mmlu.resolve_data_dir(data_root / spec.lm_eval["data"])
            mmlu.list_subjects(folder, spec.lm_eval.get("known_subjects_only", True))  # both splits, known subjects
            prepared.append(PreparedTask(spec, [], None, _files_hash(folder)))
            continue
        samples, image_root = spec.read(data_root, limit)
        samples = validate_samples(samples, spec.eval_task(), image_root)  # image files present, ids unique
        prepared.append(PreparedTask(spec, samples, image_root, dataset_hash(samples)))
    return prepared


def maybe_init_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun / a SLURM task (RANK and WORLD_SIZE set, world > 1): join the process group.

    Returns (rank, world size, this process's device); a plain process is (0, 1, device).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return 0, 1, device
    from train.distributed import init_distributed

    info = init_distributed("cuda" if device.startswith("cuda") else "cpu")
    return info.rank, info.world_size, str(info.device)


def run_identity(
    prepared: PreparedTask, family: str, model_id: str, limit: int | None, adapter: Any = None
) -> dict[str, Any]:
    """What a finished task's results.json must match to be reused (with the adapter's text settings, when it
    reports them: `eval.runner.text_settings`)."""
    from eval.runner import text_settings

    task = prepared.spec.eval_task(family)
    return normalize(
        {
            "task_version": prepared.spec.version,
            "task": dataclasses.asdict(task),
            "model_id": model_id,
            "dataset_hash": prepared.dataset_hash,
            "limit": limit,
            "text_settings": text_settings(adapter, task) if adapter is not None else None,
        }
    )


def _stored_identity(row: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(row.get("config") or "{}")
    return normalize(
        {
            "task_version": row.get("task_version"),
            "task": config.get("task"),
            "model_id": row.get("model_id"),
            "dataset_hash": row.get("dataset_hash"),
            "limit": row.get("limit"),
            "text_settings": config.get("text_settings"),
        }
    )


def finished_rows(out_dir: Path, identity: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rows of a finished task with this identity, or None (absent, unreadable, or made another way)."""
    path = out_dir / "results.json"
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    if any(_stored_identity(r) != identity for r in rows):
        log.info("%s: made with other settings, recomputing (the caches decide what can be reused)", path)
        return None
    return rows


def _lm_eval_rows(prepared: PreparedTask, loaded: Any, data_root: Path, out_dir: Path, limit: int | None, family: str) -> list[dict]:
    """Run an lm_eval task (eval.mmlu) on the family's text-only LM; one row per group, accuracy in percent."""
    from eval import mmlu
    from eval.lm_adapter import text_lm
    from eval.runner import results_rows
    from harness.io import atomic_write_text

    spec = prepared.spec
    per_subject, per_group, _ = mmlu.evaluate(
        text_lm(loaded),
        data_root / spec.lm_eval["data"],
        num_fewshot=spec.lm_eval["num_fewshot"],
        limit=limit,
        known_subjects_only=spec.lm_eval.get("known_subjects_only", True),
    )
    atomic_write_text(out_dir / "subjects.csv", per_subject.to_csv(index=False))
    task = spec.eval_task(family)
    counts = {}
    values = {}
    for group in per_group.to_dict(orient="records"):
        name = "accuracy" if group["group"] == "Overall" else f"accuracy/{group['group']}"
        values[name] = 100.0 * group["acc"]
        counts[name] = int(group["n"])
    config = {"task": dataclasses.asdict(task), "model_id": loaded.model_id, "model_config": _config_dict(loaded.config),
              "lm_eval": spec.lm_eval, "subjects": len(per_subject)}  # fmt: skip
    rows = results_rows(
        task, values, variant=f"lm-eval {spec.lm_eval['num_fewshot']}-shot, loglikelihood of ' A'..' D', micro-averaged",
        n_scored=counts["accuracy"], n_missing=0, n_skipped_corrupt=0, dataset_sha256=prepared.dataset_hash, config=config,
    )  # fmt: skip
    for row in rows:  # each group's value is averaged over its own questions
        row["n_scored"] = row["n_denominator"] = row["n_total"] = counts[row["metric"]]
    return rows


def _config_dict(config: Any) -> Any:
    from eval.runner import _model_config_dict

    return _model_config_dict(config)


def _run_task(
    prepared: PreparedTask, loaded: Any, family: str, data_root: Path, out_dir: Path, *, limit: int | None,
    batch_size: int, progress: bool | None, rank: int, judge: Any = None,
) -> list[dict[str, Any]] | None:  # fmt: skip
    from eval.runner import evaluate

    from eval.judge import NeedsJudgeError, judged_metric

    spec = prepared.spec
    if spec.kind == "lm_eval":  # rank 0 alone; the others are done (these tasks run last, so nobody waits on them)
        if spec.lm_eval.get("runner") == "text_benchmarks":
            from eval import text_benchmarks

            return text_benchmarks.rows(prepared, loaded, data_root, out_dir, limit, family) if rank == 0 else None
        return _lm_eval_rows(prepared, loaded, data_root, out_dir, limit, family) if rank == 0 else None
    metric_fn = spec.metric_builder(data_root, out_dir) if spec.metric_builder is not None else None
    if spec.judge:
        metric_fn = judged_metric(spec.judge, judge)
    try:
        frame = evaluate(
            loaded.adapter,
            spec.eval_task(family),
            prepared.samples,
            out_dir,
            metric_fn=metric_fn,
            batch_size=batch_size,
            image_root=prepared.image_root,
            model_config=loaded.config,
            progress=progress,
        )
    except NeedsJudgeError as err:  # the predictions are cached; the score is the judge's, and there is none
        return [needs_judge_row(prepared, family, getattr(loaded.adapter, "model_id", loaded.model_id), str(err))]
    return None if frame is None else frame.to_dict(orient="records")


def needs_judge_row(prepared: PreparedTask, family: str, model_id: str, reason: str) -> dict[str, Any]:
    """The result row of a judged benchmark run without a judge: value null, metric "needs_judge", and why."""
    task = prepared.spec.eval_task(family)
    n = len(prepared.samples)
    return {"task": task.name, "metric": "needs_judge", "value": None, "status": f"needs a judge: {reason}",
            "n_scored": 0, "n_missing": 0, "n_denominator": n, "n_skipped_corrupt": 0, "n_total": n, "variant": "",
            "task_version": task.version, "model_id": model_id, "dataset_hash": prepared.dataset_hash,
            "config": json.dumps({"task": dataclasses.asdict(task), "model_id": model_id}, sort_keys=True),
            "provenance": json.dumps({}, sort_keys=True)}  # fmt: skip


def evaluate_tasks(
    tasks: str | Sequence[str | TaskSpec],
    family: str,
    checkpoint: str | Path | None,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool | None = None,
    loaded: Any = None,
    judge: Any = None,
    reuse_stale: bool = False,
    restart_changed: bool = False,
    wait: bool = True,
) -> "pd.DataFrame":
    """Evaluate `checkpoint` (a family's released or run directory) on `tasks`; returns every result row.

    `loaded` (a `model.families.LoadedModel`) skips loading; `checkpoint` is then only recorded. `judge` (an
    `eval.judge.Judge`) scores the GPT-4-judged benchmarks; without one their row says "needs a judge" (value null).
    Rows carry the runner's columns (task, metric, value, n_*, variant, task_version, model_id, dataset_hash, config,
    provenance) plus family, checkpoint, split, limit, headline (the metric the paper reports) and reused (judged
    tasks: also judge, the judge's model_id or None; a row without a judge has status "needs a judge: ...").

    One process at a time evaluates a task's output directory (`harness.runlock.eval_lock`; `wait=False`: fail
    naming the owner). A finished task made by other code (`harness.code_identity`, OUT/<task>/code.json) is
    evaluated again from scratch; with `reuse_stale` its rows are reused and carry `stale` ("stale: evaluated at
    <rev>; ..."). A task made with other settings (task version, limit, dataset, model), finished or not, is
    recomputed; its prediction cache then refuses to resume (a user's output directory is never deleted), unless
    `restart_changed` (the table machinery, which owns its run directories): the task starts over from scratch.
    """
    import pandas as pd

    from harness.io import atomic_write_text

    specs = resolve_tasks(tasks)
    data_root, output_dir = Path(data_root), Path(output_dir)
    prepared = prepare_tasks(specs, data_root, limit)
    rank, world, device = maybe_init_distributed(device)
    if loaded is None:
        from model.families import get_family

        loaded = get_family(family).load(str(checkpoint), device=device)
    checkpoint_text = str(Path(checkpoint).resolve()) if checkpoint is not None else ""

    rows_of: dict[str, list[dict[str, Any]]] = {}
    # lm-eval tasks run on rank 0 only, after the sharded ones: the other ranks finish instead of waiting (for
    # longer than a collective's timeout) in a barrier.
    for task in sorted(prepared, key=lambda t: t.spec.kind == "lm_eval"):
        spec = task.spec
        out_dir = output_dir / spec.name
        # Under several ranks every rank works on the task (its shard), so no rank may wait for a lock alone.
        lock = eval_lock(out_dir) if world == 1 else None
        if lock is not None:
            lock.acquire(wait)
        try:
            rows_of[spec.name] = _evaluate_one(task, loaded, family, data_root, out_dir, checkpoint_text, limit=limit,
                                               batch_size=batch_size, progress=progress, rank=rank, judge=judge,
                                               reuse_stale=reuse_stale, restart_changed=restart_changed)  # fmt: skip
        finally:
            if lock is not None:
                lock.release()
    if rank != 0:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    combined = collect_results(output_dir)
    atomic_write_text(output_dir / "results.csv", combined.to_csv(index=False))
    return pd.DataFrame([row for task in prepared for row in rows_of.get(task.spec.name) or []])


def _evaluate_one(
    task: PreparedTask, loaded: Any, family: str, data_root: Path, out_dir: Path, checkpoint_text: str, *, limit: int | None,
    batch_size: int, progress: bool | None, rank: int, judge: Any, reuse_stale: bool, restart_changed: bool = False,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """One task: reuse its finished results when made the same way by the same code, else evaluate it."""
    from eval.cache import CacheSettingsError
    from harness.code_identity import changed_files, code_record, describe_change, made_at
    from harness.io import atomic_write_json

    spec = task.spec
    model_id = loaded.model_id if spec.kind == "lm_eval" else getattr(loaded.adapter, "model_id", loaded.model_id)
    identity = run_identity(task, family, model_id, limit, None if spec.kind == "lm_eval" else loaded.adapter)
    rows = finished_rows(out_dir, identity)
    if rows is None and restart_changed and (out_dir / "results.json").is_file():
        # Finished with other settings (a new task version or limit): its prediction cache would refuse to resume.
        log.warning("%s: finished with other settings; evaluating again from scratch", out_dir)
        shutil.rmtree(out_dir)
    if rows is not None and any(r.get("value") is None for r in rows):
        rows = None  # a "needs a judge" row: try again (a judge may be given now; the predictions are cached)
    if rows is not None and spec.judge and any(r.get("judge") != getattr(judge, "model_id", None) for r in rows):
        rows = None  # scored by another judge: rescore (from the cached predictions)
    stale = None
    if rows is not None:
        record = _read_json(out_dir / CODE_RECORD)
        if changed_files(record) != []:
            stale = f"stale: evaluated at {made_at(record)}; {describe_change(record)}"
    if stale is not None and not reuse_stale:
        # Its predictions came from other code too: start over (the prediction cache goes with the results).
        log.warning("%s: %s; evaluating again", out_dir, stale)
        shutil.rmtree(out_dir)
        rows = None
    if rows is not None:
        log.info("%s: finished with the same settings in %s, reused%s", spec.name, out_dir, f" ({stale})" if stale else "")
        return [{**r, "reused": True, **({"stale": stale} if stale else {})} for r in rows]
    try:
        rows = _run_task(task, loaded, family, data_root, out_dir, limit=limit, batch_size=batch_size,
                         progress=progress, rank=rank, judge=judge)  # fmt: skip
    except CacheSettingsError as err:
        if not restart_changed:
            raise
        # Unfinished (killed before its results.json) and made with other settings: start over, as a finished one.
        log.warning("%s: %s; evaluating again from scratch", out_dir, str(err).splitlines()[0])
        shutil.rmtree(out_dir)
        rows = _run_task(task, loaded, family, data_root, out_dir, limit=limit, batch_size=batch_size,
                         progress=progress, rank=rank, judge=judge)  # fmt: skip
    if rows is None:  # not rank 0
        return None
    run = {"family": family, "checkpoint": checkpoint_text, "split": spec.split, "limit": limit}
    if spec.judge:
        run["judge"] = getattr(judge, "model_id", None)  # who scored the answers (None: nobody, value null)
    rows = [{**r, **run, "headline": r["metric"] == spec.headline, "reused": False} for r in rows]
    atomic_write_json(out_dir / CODE_RECORD, code_record(EVAL_PACKAGES))
    atomic_write_json(out_dir / "results.json", [{k: v for k, v in r.items() if k != "reused"} for r in rows])
    return rows


CODE_RECORD = "code.json"  # which code made a task's results (harness.code_identity)
# The packages whose loaded modules an evaluation's code record lists: a table script's own module (reproduce/) is
# loaded in the same process but does not make the predictions.
EVAL_PACKAGES = ("harness", "model", "train", "eval")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_results(output_dir: str | Path) -> "pd.DataFrame":
    """Every OUTPUT/*/results.json as one frame (tasks in name order): rebuilds results.csv without running anything."""
    import pandas as pd

    rows = []
    for path in sorted(Path(output_dir).glob("*/results.json")):
        try:
            rows += json.loads(path.read_text())
        except json.JSONDecodeError as err:
            log.warning("%s is not valid JSON (%s); left out of results.csv", path, err)
    return pd.DataFrame(rows)


def format_table(frame: "pd.DataFrame") -> str:
    """The final table: one line per metric value."""
    if frame.empty:
        return "(no results)"
    columns = [c for c in TABLE_COLUMNS if c in frame.columns]
    return frame[columns].to_string(index=False, float_format=lambda x: f"{x:.2f}")
