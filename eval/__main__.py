"""Evaluate a checkpoint on registered tasks: `python -m eval TASK[,TASK...] --model FAMILY --checkpoint DIR
--data-root DIR --output-dir DIR [--limit N] [--batch-size B] [--device cpu|cuda] [--cluster local|slurm ...]`

Every task's files are checked under --data-root before the model is loaded; the model is loaded once; each
task writes resumable caches and results.json to OUTPUT/TASK/ (a finished task with the same settings is reused)
and OUTPUT/results.csv collects them all. Under torchrun the samples are sharded over the processes; with
--cluster slurm the same run is submitted through submitit (one task per GPU) and requeued on timeout, resuming
from the caches.

The caches of OUTPUT/TASK/ belong to one evaluation (task version and settings, model, dataset, --limit): a run
with other settings is refused with the differences listed; give it another --output-dir.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from eval.tasks import describe_tasks

    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__,
        epilog="tasks (and the files each expects under --data-root):\n" + describe_tasks(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tasks", metavar="TASK[,TASK...]", help="comma-separated task names (listed below)")
    parser.add_argument("--model", required=True, metavar="FAMILY", help="model family (model/families.py), e.g. lavit")
    parser.add_argument("--checkpoint", required=True, help="a released checkpoint directory or one of our run directories")
    parser.add_argument("--data-root", required=True, help="folder holding every dataset in its official layout")
    parser.add_argument("--output-dir", required=True, help="OUTPUT/TASK/ caches and results.json, OUTPUT/results.csv")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples of each task (N per subject for MMLU)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per model call")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: when stderr is a terminal)")  # fmt: skip
    parser.add_argument("--cluster", choices=("local", "slurm"), default="local")
    parser.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node (one task per GPU); 0 on CPU nodes")
    parser.add_argument("--tasks-per-node", type=int, default=None, help="slurm: tasks per node when --gpus-per-node 0")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task")
    parser.add_argument("--mem-gb", type=int, default=None, help="slurm: memory per node in GB")
    parser.add_argument("--partition", default=None, help="slurm: partition")
    parser.add_argument("--account", default=None, help="slurm: account")
    parser.add_argument("--qos", default=None, help="slurm: quality of service")
    parser.add_argument("--time", type=int, default=4 * 60, metavar="MIN", help="slurm: time limit per job in minutes")
    parser.add_argument("--max-requeues", type=int, default=20, help="slurm: requeues after timeout/preemption")
    parser.add_argument("--no-wait", action="store_true",
                        help="slurm: return after submission; local: fail at once (naming the owner) when another process "
                             "is evaluating the same task output, instead of waiting for it")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse finished results made by other code (rows marked 'stale: evaluated at <rev>') instead of "
                             "evaluating again")
    return parser


def evaluate_and_leave_group(kwargs: dict[str, Any], wait: bool = True):
    """`evaluate_tasks`, then leave the process group (under torchrun / SLURM tasks).

    Why: the ranks finish at different times (lm-eval tasks run on rank 0 alone), and a rank whose interpreter
    exits with its gloo group still alive can abort in the group's threads ("terminate called without an active
    exception", SIGABRT) and fail the whole job after its work is done. Leaving the group is local: no collective.
    """
    from eval.evaluate import evaluate_tasks
    from train.distributed import shutdown_distributed

    try:
        return evaluate_tasks(**kwargs, wait=wait)
    finally:
        shutdown_distributed()


class EvalJob:
    """A submitit callable: one SLURM task of an evaluation (the runner shards samples over the tasks)."""

    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs  # evaluate_tasks' arguments, plain data

    def __call__(self) -> list[dict[str, Any]]:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return evaluate_and_leave_group(self.kwargs).to_dict(orient="records")

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Timeout / preemption: requeue a fresh copy; it resumes from the per-sample caches."""
        import submitit

        return submitit.helpers.DelayedSubmission(EvalJob(self.kwargs))


def submit_slurm(args: argparse.Namespace, kwargs: dict[str, Any]):
    from train.slurm import SlurmOptions, make_executor

    options = SlurmOptions(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, partition=args.partition, account=args.account,
        qos=args.qos, timeout_min=args.time, max_num_timeout=args.max_requeues,
    )  # fmt: skip
    executor = make_executor(Path(kwargs["output_dir"]) / "slurm" / "%j", options, name=f"eval-{args.model}")
    return executor.submit(EvalJob(kwargs))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("eval").setLevel(logging.INFO)
    from eval.evaluate import format_table, prepare_tasks, resolve_tasks

    from eval.errors import EvalInputError
    from model.families import get_family

    if args.limit is not None and args.limit < 1:
        raise EvalInputError(f"--limit must be >= 1, got {args.limit}")
    try:  # unknown names: the messages list the valid ones
        specs = resolve_tasks(args.tasks)
        get_family(args.model)
    except KeyError as err:
        raise EvalInputError(str(err.args[0])) from None
    kwargs = dict(
        tasks=[s.name for s in specs], family=args.model, checkpoint=str(Path(args.checkpoint).resolve()),
        data_root=str(Path(args.data_root).resolve()), output_dir=str(Path(args.output_dir).resolve()), limit=args.limit,
        batch_size=args.batch_size, device=args.device, progress=args.progress, reuse_stale=args.reuse_stale,
    )  # fmt: skip
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    if args.cluster == "slurm":
        prepare_tasks(specs, args.data_root, args.limit)  # bad data fails here, not in the job
        job = submit_slurm(args, kwargs)
        print(f"submitted evaluation job {job.job_id} -> {args.output_dir}", flush=True)
        if args.no_wait:
            return 0
        import pandas as pd

        rows = job.results()[0]  # rank 0's rows
        print(format_table(pd.DataFrame(rows)))
        return 0
    frame = evaluate_and_leave_group(kwargs, wait=not args.no_wait)
    if not frame.empty:
        print(format_table(frame), flush=True)
        if "stale" in frame and frame["stale"].notna().any():
            for task, note in frame.dropna(subset=["stale"]).groupby("task")["stale"].first().items():
                print(f"{task}: {note}", flush=True)
        print(f"results: {Path(args.output_dir) / 'results.csv'}", flush=True)
    return 0


def run(argv: list[str] | None = None) -> int:
    """`main` under the one CLI convention (`harness.errors.run_cli`): bad input (missing files, unknown task or
    family, bad values) is one `error:` line and exit code 2; `--debug` or VLM_DEBUG=1 shows the traceback."""
    from harness.errors import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(run())
