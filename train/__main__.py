"""Launcher: `python -m train STAGE --config PRESET --output-dir DIR [--set k=v ...] [--cluster local|slurm] ...`

    STAGE      a stage of a model family (`train/registry.py`; the list is below), e.g. LaVIT's
               tokenizer | pixel_decoder | unified   (paper §3.3: stage 1a, stage 1b, stage 2)
    --config   a preset of the stage (paper, mini); --config-file YAML and --set key=value apply on top
    --cluster  local (default): this process, or N processes on this machine with --nproc-per-node N (torchrun)
               slurm: submit through submitit, one task per GPU (or --tasks-per-node on CPU nodes), requeued on
               timeout/preemption, resuming from the last checkpoint
    --sweep    key=v1,v2,...  (repeatable): the grid of overrides, submitted as one SLURM job array (one output
               directory per point, named by its overrides)

A run resumes automatically from the newest checkpoint in OUTPUT/checkpoints that verifies against its manifest
(sizes and SHA-256 of every file); a damaged newer one is moved to OUTPUT/checkpoints/corrupt/, never deleted. A run
directory belongs to its config: resuming with other values is refused, except the step budget, logging,
checkpointing and the batch split / wrapping (train/stages/__init__.py: RESUME_MAY_CHANGE; recorded in
OUTPUT/config_changes.jsonl).

Bad input (a config key, a missing upstream checkpoint or data file, a model too big for this machine) is one line
`error: ...` and exit code 2, checked before any model is built; --debug (or VLM_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.config import add_config_arguments, config_from_args
from harness.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from train.config import preset_group
    from train.registry import all_stages

    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, spec in all_stages().items():
        spec.config_class()  # registers the stage's presets
        p = sub.add_parser(stage, help=f"{spec.family}: {spec.summary}")
        add_config_arguments(p, preset_group(stage))
        p.add_argument("--output-dir", required=True, help="run directory (checkpoints, metrics.jsonl, config.yaml)")
        p.add_argument("--cluster", choices=("local", "slurm"), default="local")
        p.add_argument("--nproc-per-node", type=int, default=1, help="local: processes on this machine (torchrun)")
        p.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
        p.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node (one task per GPU); 0 on CPU nodes")
        p.add_argument("--tasks-per-node", type=int, default=None, help="slurm: tasks per node when --gpus-per-node 0")
        p.add_argument("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task (default: 10 with GPUs, 1 without)")
        p.add_argument("--mem-gb", type=int, default=None, help="slurm: memory per node in GB (default: SLURM's)")
        p.add_argument("--partition", default=None, help="slurm: partition")
        p.add_argument("--account", default=None, help="slurm: account")
        p.add_argument("--qos", default=None, help="slurm: quality of service")
        p.add_argument("--time", type=int, default=24 * 60, metavar="MIN", help="slurm: time limit per job in minutes")
        p.add_argument("--max-requeues", type=int, default=20, help="slurm: requeues after timeout/preemption")
        p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="slurm job array over these values")
        p.add_argument("--no-wait", action="store_true",
                       help="slurm: return after submission instead of waiting; local: fail at once (naming the owner) when "
                            "another live process is training the same --output-dir, instead of waiting for it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from train.config import preset_group

    cfg = config_from_args(args, preset_group(args.stage))
    if args.cluster == "slurm":
        from train.slurm import SlurmOptions, submit

        options = SlurmOptions(
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            tasks_per_node=args.tasks_per_node,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            timeout_min=args.time,
            max_num_timeout=args.max_requeues,
        )
        jobs = submit(args.stage, cfg, args.output_dir, options, sweep=args.sweep)
        for job, out in jobs:
            print(f"submitted {args.stage} job {job.job_id} -> {out}", flush=True)
        if args.no_wait:
            return 0
        failed = 0
        for job, out in jobs:
            try:
                summary = job.results()[0]  # rank 0's summary (one result per task)
                print(f"job {job.job_id} finished at step {summary['last_step']}: {out}", flush=True)
            except Exception as err:  # report every job, then fail
                failed += 1
                print(f"job {job.job_id} failed: {err}", file=sys.stderr, flush=True)
        return 1 if failed else 0
    if args.sweep:
        raise InputError("--sweep needs --cluster slurm (a local sweep would run the grid serially: loop in your shell)")
    from train.slurm import TrainingProcessError, run_local
    from train.stages import LOCK_WAIT_ENV

    if args.no_wait:  # read by run_stage, in this process or in the torchrun workers
        os.environ[LOCK_WAIT_ENV] = "0"
    try:
        summary = run_local(args.stage, cfg, args.output_dir, nproc_per_node=args.nproc_per_node)
    except TrainingProcessError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    if summary is not None:
        print(f"finished {args.stage} at step {summary['last_step']} -> {args.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
