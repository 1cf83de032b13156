"""Helpers shared by the stages: synthetic data for mini runs, and loading tokenizer weights."""

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


def load_encoder_weights(tokenizer, path: str) -> None:
    """EVA-CLIP ViT-g weights (the released eva_vitg_psz14.bin or any .bin/.safetensors with the same keys)."""
    if not path:
        return
    from model.lavit.official_tokenizer import _strip, read_state_dict

    state = _strip(read_state_dict(path), "encoder.")
    missing, unexpected = tokenizer.encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"encoder weights {path}: missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")


def load_tokenizer_checkpoint(tokenizer, path: str, prefix: str = "tokenizer.") -> None:
    """Stage-1a weights into `tokenizer`: a stage-1a checkpoint directory (keys `tokenizer.*`), its
    model.safetensors, or a released `visual_tokenizer/` folder. The EMA statistics are restarted."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() and ((p / "tokenizer_encoder.bin").exists() or (p / "visual_tokenizer").is_dir()):
        from model.lavit.official_tokenizer import load_official_visual_tokenizer

        loaded = load_official_visual_tokenizer(p, tokenizer.cfg)
        tokenizer.load_state_dict(loaded.state_dict())
        return
    file = p / "model.safetensors" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer weights at {path} (expected a stage-1a checkpoint directory, .safetensors, or a released visual_tokenizer/ folder)")
    state = load_file(str(file))
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if getattr(tokenizer, "token_predictor", None) is None:  # fixed-length ablation: the trained selector is unused
        state = {k: v for k, v in state.items() if not k.startswith("token_predictor.")}
    missing, unexpected = tokenizer.load_state_dict(state, strict=False)
    not_encoder = [k for k in missing if not k.startswith("encoder.")]
    if unexpected or not_encoder:
        raise RuntimeError(f"tokenizer weights {file}: missing {not_encoder[:8]}, unexpected {unexpected[:8]}")


def latest_checkpoint_dir(path: str) -> str:
    """A run directory (OUTPUT with checkpoints/step_*) -> its latest checkpoint; anything else unchanged."""
    p = Path(path)
    steps = sorted((p / "checkpoints").glob("step_*")) if (p / "checkpoints").is_dir() else []
    steps = [s for s in steps if (s / "manifest.json").is_file()]
    return str(steps[-1]) if steps else path


