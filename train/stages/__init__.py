"""The one job function every launcher calls, for any stage of any model family (`model/families.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

def task_class(stage: str):
    from model.families import get_stage

    return get_stage(stage).task_class()


def run_stage(stage: str, cfg: Any, output_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) one training job in this process: the body of every local, torchrun and SLURM task.

    Resumes from the latest valid checkpoint in OUTPUT/checkpoints; writes OUTPUT/config.yaml (the resolved
    config), OUTPUT/metrics.jsonl, and OUTPUT/run.json (summary + provenance) when the last step is done.
    """
    from harness.config import save_config
    from harness.io import atomic_write_json, provenance
    from train.distributed import barrier, init_distributed, shutdown_distributed
    from train.trainer import Trainer

    import torch.distributed as dist

    output_dir = Path(output_dir)
    owns_process_group = not dist.is_initialized()  # a caller that set up the group keeps it (and tears it down)
    info = init_distributed(cfg.dist.device)
    try:
        if info.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, output_dir)
        barrier()
        task = task_class(stage)(cfg, output_dir)
        trainer = Trainer(task, info, output_dir, cfg.optim, cfg.loop, cfg.dist)
        result = trainer.fit()
        summary = {
            "stage": stage,
            "last_step": result["last_step"],
            "resumed_from_step": result["start_step"],
            "finished": result["last_step"] >= cfg.loop.steps,
            "world_size": info.world_size,
            "final_metrics": result["metrics"],
            "data": result["data"],
            "provenance": provenance(),
        }
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
