"""2-process DDP and FSDP2 (gloo, CPU) give the same loss curve as one process with the same global batch.

Stage 2 (unified) at mini size, with `data.partition=sequence` so that the global batch is the same set of packed
sequences at any world size. Both strategies run in one torchrun launch (one interpreter start-up per rank).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import get_preset, resolve
from train.distributed import _free_port

OVERRIDES = [
    "tokenizer_checkpoint=random-init",  # the explicit opt-in to a random stage-1a tokenizer (no upstream run here)
    "data.partition=sequence",
    "data.text_to_image_text=[1.0, 3.0]",  # mostly image-text: both [image; text] and [text; image] documents
    "loop.steps=3",
    "loop.global_batch_size=4",
    "loop.micro_batch_size=1",  # 1 process: 4 accumulation steps; 2 processes: 2 each
]

WORKER = """
import sys
from harness.config import get_preset, resolve
import train.lavit.config  # noqa: F401
from train.distributed import init_distributed, shutdown_distributed
from train.stages import run_stage
overrides = sys.argv[2:]
init_distributed("cpu")  # one process group for both runs (re-creating it in one process is fragile)
for strategy in ("ddp", "fsdp"):
    cfg = resolve(get_preset("train/unified", "mini"), overrides=[*overrides, f"dist.strategy={strategy}"])
    run_stage("unified", cfg, f"{sys.argv[1]}/{strategy}")
shutdown_distributed()
"""


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_ddp_and_fsdp2_match_one_process(tmp_path):
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)
    from train.stages import run_stage

    single = run_stage("unified", resolve(get_preset("train/unified", "mini"), overrides=OVERRIDES), tmp_path / "single")
    assert single["data"]["image_text/drawn_understanding"] > 0 and single["data"]["image_text/drawn_generation"] > 0

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}", str(script), str(tmp_path), *OVERRIDES]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]

    reference = losses(tmp_path / "single")
    assert len(reference) == 3
    for strategy in ("ddp", "fsdp"):
        run = json.loads((tmp_path / strategy / "run.json").read_text())
        assert run["world_size"] == 2 and run["finished"]
        assert losses(tmp_path / strategy) == pytest.approx(reference, rel=1e-5, abs=1e-6), strategy
    # The losses move (the comparison is not between constants).
    assert reference[0] != reference[-1]
