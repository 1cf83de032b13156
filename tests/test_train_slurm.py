"""The launcher on a real (local, single-node) SLURM through submitit: a 2-task mini job, and a requeued job that
resumes from its checkpoint. Skipped, saying why, when SLURM is not installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_cluster import job_state, slurm_cluster, wait_for  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slurm


def launch(out: Path, *extra: str, wait: bool = True, timeout: float = 150) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train", "tokenizer", "--config", "mini", "--output-dir", str(out), "--cluster", "slurm",
               "--gpus-per-node", "0", "--time", "10", *extra]
    if not wait:
        command.append("--no-wait")
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_mini_job_runs_as_two_slurm_tasks(slurm_cluster, tmp_path):
    done = launch(tmp_path / "run", "--tasks-per-node", "2", "--set", "loop.micro_batch_size=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"job \d+ finished at step 8", done.stdout), done.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["finished"] and run["world_size"] == 2 and run["last_step"] == 8
    assert (tmp_path / "run" / "config.yaml").is_file()
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_requeued_job_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    out = tmp_path / "run"
    # Long enough that the requeue lands mid-run on a quiet machine too (a mini step takes ~17-30 ms; SLURM lets the
    # job run KillWait s after SIGTERM, and 150 steps could finish before the requeue took effect).
    steps = 3000
    submitted = launch(out, "--tasks-per-node", "1", "--set", f"loop.steps={steps}", "--set", "loop.checkpoint_every=2", wait=False)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted tokenizer job (\d+)", submitted.stdout).group(1)

    # Any verified checkpoint: only the newest two are kept, so one step's directory lives for a few milliseconds
    # (shorter than the poll interval once steps got faster).
    wait_for(lambda: any((out / "checkpoints").glob("step_*/manifest.json")), 180, "the first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    # SLURM holds a requeued batch job back for a while (BeginTime); let it start again at once.
    wait_for(lambda: job_state(job_id) == "PENDING", 60, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
    # Generous: on a loaded 2-core machine the requeued job restarts Python and torch before it resumes.
    wait_for(lambda: job_state(job_id) is None and (out / "run.json").exists(), 360, "the requeued job to finish", interval=0.5)

    run = json.loads((out / "run.json").read_text())
    assert run["finished"] and run["last_step"] == steps
    assert 4 <= run["resumed_from_step"] < steps, run["resumed_from_step"]
    log = "".join(p.read_text() for p in (out / "slurm" / job_id).glob("*_log.out"))
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran twice
    lines = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, steps + 1))  # one line per step across the requeue


def test_sweep_is_one_job_array(slurm_cluster, tmp_path):
    done = launch(tmp_path / "sweep", "--tasks-per-node", "1", "--set", "loop.steps=2", "--sweep", "optim.lr=1e-3,2e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    ids = re.findall(r"submitted tokenizer job (\S+)", done.stdout)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids)  # ARRAYID_INDEX
    for point, lr in (("optim.lr=1e-3", 1e-3), ("optim.lr=2e-3", 2e-3)):
        run = json.loads((tmp_path / "sweep" / point / "run.json").read_text())
        assert run["finished"]
        first = json.loads((tmp_path / "sweep" / point / "metrics.jsonl").read_text().splitlines()[1])
        assert first["lr"] == pytest.approx(lr)  # step 2 is the end of the 2-step warm-up: the peak LR
