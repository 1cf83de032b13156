"""Helpers any family's stages share: synthetic data for mini runs, the latest checkpoint of a run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from train.config import SyntheticDataConfig
from train.distributed import DistInfo, barrier


def synthetic_image_shards(cfg: SyntheticDataConfig, output_dir: Path, info: DistInfo) -> list[str]:
    """Write (once, on rank 0) and return the glob of deterministic synthetic image-text shards."""
    from train.data import write_synthetic_image_text_shards

    directory = Path(output_dir) / "synthetic_data" / "images"
    done = directory / "DONE"
    if info.is_main and not done.exists():
        write_synthetic_image_text_shards(directory, cfg.num_shards, cfg.samples_per_shard, cfg.image_size)
        done.write_text("ok\n")
    barrier()
    return [str(directory / "shard-*.tar")]


def synthetic_text_sources(cfg: SyntheticDataConfig, names: list[str], output_dir: Path, info: DistInfo) -> dict[str, list[str]]:
    """One synthetic JSONL file per text source name (written once, on rank 0)."""
    from train.data import write_synthetic_jsonl

    directory = Path(output_dir) / "synthetic_data" / "text"
    sources = {}
    for i, name in enumerate(sorted(names)):
        path = directory / f"{name}.jsonl"
        if info.is_main and not path.exists():
            write_synthetic_jsonl(path, cfg.text_docs, seed=i)
        sources[name] = [str(path)]
    barrier()
    return sources


def latest_checkpoint_dir(path: str) -> str:
    """A run directory (OUTPUT with checkpoints/step_*) -> its latest checkpoint; anything else unchanged."""
    p = Path(path)
    steps = sorted((p / "checkpoints").glob("step_*")) if (p / "checkpoints").is_dir() else []
    steps = [s for s in steps if (s / "manifest.json").is_file()]
    return str(steps[-1]) if steps else path


