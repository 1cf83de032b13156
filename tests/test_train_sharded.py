"""Sharded checkpoints through torch.distributed.checkpoint: written by 2 FSDP2 processes (gloo, CPU), resumed by 2
(bit-identical to the uninterrupted run) and by 1 (resharded: the loaded state is bit-identical to the saved one).

Stage 2 (unified) at mini size with `data.partition=sequence`: every process reads the whole packed stream and
takes its stride of it, so the data position is the same on every process and carries over to another world size.
All 2-process runs happen in one torchrun launch (one interpreter start-up per rank).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import get_preset, resolve
from train.distributed import _free_port

OVERRIDES = [
    "tokenizer_checkpoint=random-init",
    "data.partition=sequence",
    "data.text_to_image_text=[1.0, 3.0]",
    "loop.steps=4",
    "loop.checkpoint_every=2",
    "loop.keep_checkpoints=3",
    "loop.global_batch_size=2",
    "loop.micro_batch_size=1",
    "dist.strategy=fsdp",
]

WORKER = """
import shutil, sys
from harness.config import get_preset, resolve
import train.lavit.config  # noqa: F401
from train.distributed import barrier, init_distributed, shutdown_distributed
from train.stages import run_stage
root, overrides = sys.argv[1], sys.argv[2:]
cfg = resolve(get_preset("train/unified", "mini"), overrides=overrides)
info = init_distributed("cpu")
run_stage("unified", cfg, f"{root}/reference")  # uninterrupted, 2 processes
cut = resolve(get_preset("train/unified", "mini"), overrides=[*overrides, "loop.max_steps_this_run=2"])
run_stage("unified", cut, f"{root}/resumed2")  # stops after the step-2 checkpoint
if info.is_main:
    shutil.copytree(f"{root}/resumed2", f"{root}/resumed1")  # the same checkpoint, for the 1-process resume
barrier()
run_stage("unified", cfg, f"{root}/resumed2")  # resumes at step 2 with 2 processes
shutdown_distributed()
"""


def _config(*extra: str):
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)

    return resolve(get_preset("train/unified", "mini"), overrides=[*OVERRIDES, *extra])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sharded_save_with_2_processes_resumes_with_2_and_with_1(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}", str(script), str(tmp_path), *OVERRIDES]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]

    # The layout: one DCP shard file per process, the manifest covers each; the last checkpoint exports full weights.
    step2 = tmp_path / "resumed1" / "checkpoints" / "step_00000002"
    manifest = json.loads((step2 / "manifest.json").read_text())
    assert manifest["layout"] == "sharded" and manifest["world_size"] == 2
    shards = sorted(n for n in manifest["files"] if n.startswith("dcp/") and n.endswith(".distcp"))
    assert len(shards) == 2 and all(manifest["files"][n]["size"] > 0 for n in shards)
    assert "model.safetensors" not in manifest["files"]  # not the final step: no full copy
    final = tmp_path / "reference" / "checkpoints" / "step_00000004"
    assert "model.safetensors" in json.loads((final / "manifest.json").read_text())["files"]

    # 2 -> 2: bit-identical continuation.
    run = json.loads((tmp_path / "resumed2" / "run.json").read_text())
    assert run["resumed_from_step"] == 2 and run["finished"] and run["world_size"] == 2
    assert (tmp_path / "resumed2" / "checkpoints" / "step_00000004" / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
    assert _losses(tmp_path / "resumed2") == _losses(tmp_path / "reference")

    # 2 -> 1: the resharded state is bit-identical to what the 2 processes saved (read back independently through
    # DCP's own consolidation), and the run continues.
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from safetensors.torch import load_file

    from train.lavit.unified import UnifiedTask
    from train.checkpoint import CheckpointManager, export_full_weights, verify_checkpoint
    from train.distributed import init_distributed, shutdown_distributed
    from train.stages import run_stage
    from train.trainer import build_optimizer

    dcp_to_torch_save(str(step2 / "dcp"), str(tmp_path / "consolidated.pt"))
    saved = torch.load(tmp_path / "consolidated.pt", weights_only=True)
    cfg = _config()
    info = init_distributed("cpu")
    try:
        task = UnifiedTask(cfg, tmp_path / "scratch")
        module = task.build_model(info)
        optimizer = build_optimizer(task.param_groups(module), cfg.optim)
        manager = CheckpointManager(tmp_path / "resumed1" / "checkpoints", info, exclude_prefixes=task.checkpoint_exclude())
        loaded = manager.load(step2, module, optimizer)
        assert loaded.saved_world_size == 2 and loaded.rank_state["rng"] is not None
        state = module.state_dict()
        assert set(saved["model"]) == {k for k in state if not k.startswith(task.checkpoint_exclude())}
        for key, tensor in saved["model"].items():
            assert torch.equal(state[key], tensor), key
        # The export of a sharded checkpoint as one full weights file holds the same tensors.
        exported = load_file(str(export_full_weights(step2, tmp_path / "step2.safetensors")))
        assert exported.keys() == saved["model"].keys() and all(torch.equal(exported[k], v) for k, v in saved["model"].items())
        names = {id(p): n for n, p in module.named_parameters()}
        moments = {names[id(p)]: s for p, s in optimizer.state.items()}
        assert moments and set(moments) == set(saved["optim"]["state"])
        for name, s in moments.items():
            assert torch.equal(s["exp_avg"], saved["optim"]["state"][name]["exp_avg"]), name
    finally:
        shutdown_distributed()

    # A truncated shard is named by the verification like any other file.
    shard = step2 / shards[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-1])
    assert verify_checkpoint(step2) == f"{shard}: {len(data) - 1} bytes, the manifest says {len(data)} (truncated or overwritten)"
    shard.write_bytes(data)

    summary = run_stage("unified", cfg, tmp_path / "resumed1")
    assert summary["resumed_from_step"] == 2 and summary["finished"] and summary["world_size"] == 1
    # One process sums the same global batch in another order than two: equal up to float rounding.
    assert _losses(tmp_path / "resumed1") == pytest.approx(_losses(tmp_path / "reference"), rel=1e-5, abs=1e-6)
    assert _losses(tmp_path / "reference")[0] != _losses(tmp_path / "reference")[-1]
