"""Exact resume: a mini run killed with SIGKILL mid-way and restarted ends bit-identical to an uninterrupted run.

For stage 1a (the tokenizer; the kill lands after the VQ switch with k-means init, so the EMA codebook state is
part of what must survive) and stage 2 (unified; packed sequences, mixture position and a document cut across
sequences must survive). The killed run is a real `python -m train` process; the reference and the restart run
in this process through the same job function.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.config import get_preset, resolve

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = {
    "tokenizer": ["loop.steps=10", "loop.checkpoint_every=2", "vq_start_step=3"],
    "unified": ["loop.steps=10", "loop.checkpoint_every=2", "tokenizer_checkpoint=random-init"],
}


def _config(stage: str):
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)

    return resolve(get_preset(f"train/{stage}", "mini"), overrides=OVERRIDES[stage])


def _kill_after_checkpoint(stage: str, out: Path, step: int) -> int:
    command = [sys.executable, "-m", "train", stage, "--config", "mini", "--output-dir", str(out)]
    for override in OVERRIDES[stage]:
        command += ["--set", override]
    # The killed run computes steps 1..4 of the compared run, so it must compute them as this process does: CPU
    # float reductions (matmul, sum) depend on the number of intra-op threads, so pass ours on.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = out / "checkpoints" / f"step_{step:08d}" / "manifest.json"
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before checkpoint {step}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint {step} within 180 s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def _final(out: Path, steps: int) -> tuple[bytes, dict]:
    path = out / "checkpoints" / f"step_{steps:08d}"
    return (path / "model.safetensors").read_bytes(), torch.load(path / "optimizer.pt", weights_only=True)


@pytest.mark.parametrize("stage", ["tokenizer", "unified"])
def test_sigkill_then_resume_is_bit_identical(stage, tmp_path):
    from train.stages import run_stage

    cfg = _config(stage)
    reference = run_stage(stage, cfg, tmp_path / "reference")
    assert reference["finished"] and reference["resumed_from_step"] == 0

    killed_pid = _kill_after_checkpoint(stage, tmp_path / "killed", step=4)
    # The killed process still "owns" the run: its lock file stays behind. The restart takes the lock over (its
    # owner is gone), says so, and resumes from the newest verified checkpoint.
    assert json.loads((tmp_path / "killed" / ".lock").read_text())["pid"] == killed_pid
    start = time.perf_counter()
    resumed = run_stage(stage, cfg, tmp_path / "killed")
    print(f"take-over and resume of {stage}: {time.perf_counter() - start:.1f} s")
    assert 4 <= resumed["resumed_from_step"] < cfg.loop.steps and resumed["finished"]
    attempts = [json.loads(l) for l in (tmp_path / "killed" / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 1 and attempts[0]["took_over"]["pid"] == killed_pid  # the killed one never finished
    assert attempts[0]["from_step"] == resumed["resumed_from_step"] and not (tmp_path / "killed" / ".lock").exists()

    ref_weights, ref_optim = _final(tmp_path / "reference", cfg.loop.steps)
    weights, optim = _final(tmp_path / "killed", cfg.loop.steps)
    assert weights == ref_weights  # bit-identical parameters and buffers (safetensors bytes)
    for key, state in ref_optim["state"].items():
        for name, tensor in state.items():
            assert torch.equal(optim["state"][key][name], tensor), (key, name)
    # metrics.jsonl holds one line per step, the same numbers as the uninterrupted run (timings aside).
    def curve(out):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]

    assert curve(tmp_path / "killed") == curve(tmp_path / "reference")
    assert [s for s, _, _ in curve(tmp_path / "reference")] == list(range(1, cfg.loop.steps + 1))
    if stage == "tokenizer":
        lines = [json.loads(l) for l in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
        assert [l["vq"] for l in lines] == [0.0] * 3 + [1.0] * 7  # the quantizer switched on at step 3
        assert lines[-1]["codebook_fraction_used"] > 0
