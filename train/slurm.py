"""Running a training job: in this process, with torchrun on this machine, or on SLURM through submitit.

The training code never mentions SLURM. `TrainingJob` wraps the same `run_stage(stage, cfg, output_dir)` the local
launcher calls; submitit runs one copy per SLURM task (one task per GPU), each exporting the env:// rendezvous
from SLURM's variables (`TorchDistributedEnvironment().export()`) before `init_process_group`. On timeout or
preemption submitit calls `checkpoint()`, which returns a `DelayedSubmission` of a fresh copy: the requeued job
starts over in the same output directory and the trainer resumes from the latest checkpoint there. A manual
`scontrol requeue` restarts the same pickled job, which resumes the same way.

Sweeps (the ablation grids) are submitted as one job array, one output directory per grid point.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import from_dict, parse_override, merge, to_dict
from harness.errors import InputError


class SlurmSubmissionError(InputError):
    """sbatch refused the job or could not be run; the message carries SLURM's reason."""


@dataclass
class SlurmOptions:
    nodes: int = 1  # nodes per job
    gpus_per_node: int = 8  # GPUs per node; one task per GPU. 0 on CPU-only clusters
    tasks_per_node: int | None = None  # tasks per node when gpus_per_node == 0 (default 1)
    cpus_per_task: int | None = None  # CPU cores per task (default: 10 with GPUs, 1 without)
    mem_gb: int | None = None  # memory per node; None = the partition's default
    partition: str | None = None  # SLURM partition
    account: str | None = None  # SLURM account
    qos: str | None = None  # SLURM quality of service
    timeout_min: int = 24 * 60  # time limit of one job; longer runs continue through requeues
    max_num_timeout: int = 20  # how many timeouts/preemptions are requeued
    signal_delay_s: int = 120  # USR2 this long before the time limit (submitit's checkpoint hook)

    def tasks(self) -> int:
        if self.gpus_per_node > 0:
            if self.tasks_per_node not in (None, self.gpus_per_node):
                raise ValueError(f"tasks_per_node={self.tasks_per_node} with gpus_per_node={self.gpus_per_node}: one task per GPU")
            return self.gpus_per_node
        return self.tasks_per_node or 1


def _stage_config_class(stage: str):
    from train.registry import stage_config_class

    return stage_config_class(stage)


class TrainingJob:
    """A submitit callable: runs one task of a (possibly multi-node) training job. Pickles as plain data."""

    def __init__(self, stage: str, config: dict[str, Any], output_dir: str):
        self.stage = stage
        self.config = config  # to_dict() of the resolved stage config (plain data, robust to pickling)
        self.output_dir = str(output_dir)

    def __call__(self) -> dict[str, Any]:
        import submitit

        from train.stages import run_stage

        env = submitit.helpers.TorchDistributedEnvironment()
        # The device is chosen from LOCAL_RANK (train/distributed.py); keep all GPUs of the node visible.
        env.export(set_cuda_visible_devices=False)
        cfg = from_dict(_stage_config_class(self.stage), self.config)
        return run_stage(self.stage, cfg, self.output_dir)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Timeout / preemption: requeue a fresh copy; it resumes from the latest checkpoint in output_dir."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingJob(self.stage, self.config, self.output_dir))


def make_executor(folder: str | Path, options: SlurmOptions, name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=options.max_num_timeout)
    params: dict[str, Any] = {
        "name": name,
        "nodes": options.nodes,
        "tasks_per_node": options.tasks(),
        "cpus_per_task": options.cpus_per_task or (10 if options.gpus_per_node > 0 else 1),
        "timeout_min": options.timeout_min,
        "slurm_signal_delay_s": options.signal_delay_s,
    }
    if options.gpus_per_node > 0:
        params["gpus_per_node"] = options.gpus_per_node
    if options.mem_gb is not None:
        params["mem_gb"] = options.mem_gb
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.account:
        params["slurm_account"] = options.account
    if options.qos:
        params["slurm_qos"] = options.qos
    executor.update_parameters(**params)
    return executor


def sweep_points(sweep: list[str]) -> list[list[str]]:
    """["a=1,2", "b=x,y"] -> [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"]]."""
    axes = []
    for text in sweep:
        if "=" not in text:
            raise ValueError(f"--sweep {text!r} is not of the form key=v1,v2,...")
        key, values = text.split("=", 1)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(point) for point in itertools.product(*axes)] if axes else [[]]


def point_dir_name(point: list[str]) -> str:
    return ",".join(point).replace("/", "_") or "run"


def submit(stage: str, cfg: Any, output_dir: str | Path, options: SlurmOptions, sweep: list[str] | None = None):
    """Submit one job (or a job array over the sweep grid). Returns [(job, output_dir)]."""
    from train.stages import prepare_run

    output_dir = Path(output_dir).resolve()
    points = sweep_points(sweep or [])
    runs = []
    for point in points:
        point_cfg = cfg
        for override in point:
            point_cfg = merge(point_cfg, parse_override(override))
        out = output_dir / point_dir_name(point) if sweep else output_dir
        # Bad input is reported here, not in a job log hours later (memory is checked on the compute node).
        prepare_run(stage, point_cfg, out, world_size=options.nodes * options.tasks(), memory=False)
        runs.append((stage, point_cfg, out))
    from train.registry import get_stage

    family = get_stage(stage).family
    return submit_jobs(runs, options, output_dir / "slurm", name=f"{family}-{stage}")


def submit_jobs(runs: list[tuple[str, Any, str | Path]], options: SlurmOptions, log_dir: str | Path, name: str):
    """Submit independent (stage, config, output_dir) runs: one job, or one job array (`sbatch --array`) for several.
    Returns [(job, output_dir)] in the order given. The caller has checked the runs' inputs (`prepare_run`);
    a submission SLURM refuses is a SlurmSubmissionError carrying SLURM's reason."""
    calls = [(TrainingJob(stage, to_dict(cfg), str(Path(out).resolve())), Path(out).resolve()) for stage, cfg, out in runs]
    try:
        executor = make_executor(Path(log_dir) / "%j", options, name=name)
        if len(calls) == 1:
            return [(executor.submit(calls[0][0]), calls[0][1])]
        jobs = []
        with executor.batch():  # one sbatch --array for the whole set
            for job_fn, _ in calls:
                jobs.append(executor.submit(job_fn))
    except Exception as err:  # sbatch missing, rejected options, controller down: submitit's many exception types
        message = " ".join(str(err).split()) or type(err).__name__
        raise SlurmSubmissionError(f"SLURM submission failed ({type(err).__name__}): {message[:500]}") from err
    return list(zip(jobs, [out for _, out in calls]))


# ---------------------------------------------------------------------------------------------
# Local runs.


def run_local(stage: str, cfg: Any, output_dir: str | Path, nproc_per_node: int = 1) -> dict[str, Any] | None:
    """One process: run here. Several: torchrun on this machine, each process running the same job function."""
    if nproc_per_node <= 1:
        from train.stages import run_stage

        return run_stage(stage, cfg, output_dir)
    import yaml

    from train.stages import prepare_run

    prepare_run(stage, cfg, output_dir, world_size=nproc_per_node, local_processes=nproc_per_node)  # before any process starts

    from harness.io import atomic_write_text

    output_dir = Path(output_dir)
    launch = output_dir / "launch_config.yaml"
    atomic_write_text(launch, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    from train.distributed import _free_port

    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
        f"--master-port={_free_port()}", "-m", "train.slurm", "worker", stage, str(output_dir), str(launch),
    ]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise TrainingProcessError(f"{nproc_per_node} training processes under torchrun failed (exit code {done.returncode}); their messages are above")
    return None


class TrainingProcessError(RuntimeError):
    """A torchrun launch whose processes failed (they printed their own errors)."""


def _worker(argv: list[str]) -> None:
    """`python -m train.slurm worker STAGE OUTPUT CONFIG_YAML`: one torchrun process."""
    import yaml

    from train.stages import run_stage

    stage, output_dir, config_path = argv
    cfg = from_dict(_stage_config_class(stage), yaml.safe_load(Path(config_path).read_text()))
    run_stage(stage, cfg, output_dir)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        _worker(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m train.slurm worker STAGE OUTPUT CONFIG_YAML (use python -m train to launch)")
