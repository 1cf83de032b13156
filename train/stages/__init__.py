"""The one job function every launcher calls, for any stage of any model family (`train/registry.py`).

Before anything is built or written, `run_stage` checks, in this order (each failure is an InputError that names
the key, file or value; `python -m train` prints it as one `error:` line, exit 2):

1. the output directory can be one (not a file);
2. the stage's own required inputs (`task.check_inputs()`: upstream checkpoints, data paths);
3. the run directory's config: a directory that holds a run belongs to that run's config. Resuming with a
   different resolved config is refused with the list of changed keys; only `RESUME_MAY_CHANGE` (the step budget,
   logging, checkpoint cadence and layout) may change, and such changes are recorded in config_changes.jsonl;
4. memory: a model whose weights, gradients and AdamW moments alone exceed this machine's memory is refused
   before it is allocated (`task.parameter_counts()`; VLM_SKIP_MEMORY_CHECK=1 skips the check).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from harness.code_identity import code_record
from harness.errors import InputError

# Keys that may differ between a run directory's config.yaml and a resumed run (recorded when they do): the step
# budget, logging, checkpointing, and how the same global batch is computed (split into micro-batches, wrapped,
# recomputed in backward) -- never what is trained on what, with which model and optimizer.
RESUME_MAY_CHANGE = (
    "loop.steps",
    "loop.max_steps_this_run",
    "loop.log_every",
    "loop.progress",
    "loop.tensorboard",
    "loop.checkpoint_every",
    "loop.keep_checkpoints",
    "loop.checkpoint_format",
    "loop.micro_batch_size",
    "dist.strategy",
    "dist.activation_checkpointing",
)
CONFIG_CHANGES = "config_changes.jsonl"


class ConfigDriftError(InputError):
    """A run directory resumed with a config that differs in keys that change what the weights mean."""


def task_class(stage: str):
    from train.registry import get_stage

    return get_stage(stage).task_class()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, current value) for every key that differs (missing on one side: None)."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _holds_a_run(output_dir: Path) -> bool:
    from train.checkpoint import step_dirs

    return bool(step_dirs(output_dir / "checkpoints")) or (output_dir / "run.json").is_file()


def check_resume_config(cfg: Any, output_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The allowed changes against the run directory's config.yaml ({} for a new run); refused changes raise."""
    import yaml

    from harness.config import to_dict

    saved_file = output_dir / "config.yaml"
    if not saved_file.is_file() or not _holds_a_run(output_dir):
        return {}
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{saved_file}: unreadable ({err}); the run directory's config is needed to resume") from None
    current = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))  # the same round trip as config.yaml
    changes = config_changes(saved, current)
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigDriftError(
            f"{output_dir} holds a run with another config ({output_dir / 'config.yaml'}); changed keys: {shown}. "
            f"Resume with the run's config (only {', '.join(RESUME_MAY_CHANGE)} may change), or use a new --output-dir"
        )
    return changes


def _available_memory_bytes(device: str) -> tuple[int, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))
        return free, "free GPU memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def check_memory(task: Any, cfg: Any, world_size: int, local_processes: int = 1) -> None:
    """Refuse a model that clearly cannot fit: fp32 weights, gradients and two AdamW moments of the trainable
    parameters (16 bytes each; divided over the processes under FSDP) plus fp32 frozen weights -- a lower bound,
    activations come on top."""
    if not hasattr(task, "parameter_counts") or os.environ.get("VLM_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return
    trainable, frozen = task.parameter_counts()
    shards = world_size if cfg.dist.strategy == "fsdp" else 1
    need = 16 * trainable / shards + 4 * frozen
    have, what = _available_memory_bytes(cfg.dist.device)
    if what != "free GPU memory":  # the processes on this machine share its RAM
        have //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", str(local_processes))))
    if need > have:
        raise InputError(
            f"this model needs at least {need / 2**30:.1f} GiB per process ({trainable / 1e9:.2f} B trainable parameters "
            f"x 16 bytes for fp32 weights, gradients and AdamW moments{f' / {shards} FSDP shards' if shards > 1 else ''}, "
            f"+ {frozen / 1e9:.2f} B frozen x 4 bytes), but this machine has {have / 2**30:.1f} GiB of {what}. Run it on "
            f"GPUs with more processes (--nproc-per-node, --cluster slurm; dist.strategy=fsdp shards it), or use "
            f"--config mini. (VLM_SKIP_MEMORY_CHECK=1 skips this check)"
        )


def prepare_run(
    stage: str, cfg: Any, output_dir: str | Path, world_size: int | None = None, memory: bool = True, local_processes: int = 1
) -> tuple[Any, dict]:
    """Every check of the module docstring, in order, before anything is built or written. Launchers call it
    too, before they start processes or submit jobs (`memory=False` where the job runs on other machines).

    Returns the stage's task and the allowed config changes against the run directory's config."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} exists and is not a directory")
    try:
        task = task_class(stage)(cfg, output_dir)
    except InputError:
        raise
    except ValueError as err:  # the tasks validate their config in __init__
        raise InputError(str(err)) from err
    if hasattr(task, "check_inputs"):
        task.check_inputs()
    changes = check_resume_config(cfg, output_dir)
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if memory:
        check_memory(task, cfg, world_size, local_processes)
    return task, changes


def run_stage(stage: str, cfg: Any, output_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) one training job in this process: the body of every local, torchrun and SLURM task.

    Resumes from the newest checkpoint in OUTPUT/checkpoints that verifies; writes OUTPUT/config.yaml (the
    resolved config), OUTPUT/metrics.jsonl, and OUTPUT/run.json (summary + provenance) when the last step is done.
    """
    from harness.runlock import run_lock

    output_dir = Path(output_dir)
    task, changes = prepare_run(stage, cfg, output_dir)
    # One process at a time trains a run directory (harness/runlock.py). The launching rank holds the lock; under
    # torchrun/SLURM the other ranks of the same job follow it. A process that waited for another owner re-checks
    # the directory that owner left (its config, then resumes: a finished run trains no step).
    lock = run_lock(output_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    if lock is not None:
        lock.acquire(wait=os.environ.get(LOCK_WAIT_ENV, "1") != "0")
        if lock.waited_s > 0 or lock.took_over:
            try:
                task, changes = prepare_run(stage, cfg, output_dir)
            except BaseException:
                lock.release()
                raise
    try:
        return _run_locked(stage, cfg, output_dir, task, changes, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(stage: str, cfg: Any, output_dir: Path, task: Any, changes: dict, lock: Any) -> dict[str, Any]:
    from harness.config import save_config
    from harness.io import atomic_write_json, provenance
    from train.distributed import barrier, init_distributed, shutdown_distributed
    from train.trainer import Trainer

    import torch.distributed as dist

    owns_process_group = not dist.is_initialized()  # a caller that set up the group keeps it (and tears it down)
    info = init_distributed(cfg.dist.device)
    def write_config() -> None:  # once the trainer knows it can start or resume
        if not info.is_main:
            return
        if changes:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "changes": {k: list(v) for k, v in changes.items()}}
            with open(output_dir / CONFIG_CHANGES, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"[train] resuming with changed {', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items())}", flush=True)
        save_config(cfg, output_dir)

    try:
        if info.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        trainer = Trainer(task, info, output_dir, cfg.optim, cfg.loop, cfg.dist)
        result = trainer.fit(on_start=write_config)
        previous = _finished_summary(output_dir)
        summary = {
            "stage": stage,
            "last_step": result["last_step"],
            "resumed_from_step": result["start_step"],
            "finished": result["last_step"] >= cfg.loop.steps,
            "world_size": info.world_size,
            "final_metrics": result["metrics"],
            "data": result["data"],
            "provenance": provenance(),
            # What trained it: the sources of every checkout module this process loaded, and the runs it read.
            "code": code_record(),
            "inputs": upstream_digests(stage, cfg),
        }
        if previous is not None and result["start_step"] >= result["last_step"]:
            # Nothing trained here (another process finished the run, or a rerun of a finished one): the run is
            # still the one its first trainer made, so its record of code and inputs stays.
            summary.update({k: previous[k] for k in ("code", "inputs", "provenance", "resumed_from_step") if k in previous})
        if info.is_main:
            _log_attempt(output_dir, result, lock)
        if (output_dir / CONFIG_CHANGES).is_file():
            summary["config_changes"] = [json.loads(l) for l in (output_dir / CONFIG_CHANGES).read_text().splitlines() if l.strip()]
        if info.is_main:
            if summary["data"]:
                print(f"[train] data stream: {json.dumps(summary['data'])}", flush=True)
            if summary["finished"]:
                atomic_write_json(output_dir / "run.json", summary)
        barrier()
        return summary
    finally:
        if owns_process_group:
            shutdown_distributed()


LOCK_WAIT_ENV = "VLM_LOCK_WAIT"  # "0": a run owned by another live process fails at once (`--no-wait`)
ATTEMPTS = "attempts.jsonl"  # one line per process that held the run: what it trained, whom it took over from


def _finished_summary(output_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((output_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("finished") else None


def upstream_digests(stage: str, cfg: Any) -> dict[str, str]:
    """Config key -> SHA-256 of the upstream run's run.json, for every key that names an upstream run: a run
    whose input was retrained since is stale even where its own code is not."""
    import hashlib

    from harness.config import to_dict
    from train.registry import get_stage

    flat = _flatten(to_dict(cfg))
    out = {}
    for key in get_stage(stage).upstream:
        path = flat.get(key)
        summary = Path(str(path)) / "run.json" if path else None
        if summary is not None and summary.is_file():
            out[key] = hashlib.sha256(summary.read_bytes()).hexdigest()
    return out


def _log_attempt(output_dir: Path, result: dict[str, Any], lock: Any) -> None:
    import socket

    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(), "pid": os.getpid(),
              "from_step": result["start_step"], "to_step": result["last_step"],
              "waited_s": round(lock.waited_s, 1) if lock is not None else None,
              "took_over": lock.took_over if lock is not None else None}  # fmt: skip
    with open(output_dir / ATTEMPTS, "a") as f:
        f.write(json.dumps(record) + "\n")


def trainings(output_dir: str | Path) -> int:
    """How many processes trained at least one step of this run (attempts.jsonl)."""
    path = Path(output_dir) / ATTEMPTS
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip() and (r := json.loads(line))["to_step"] > r["from_step"])
