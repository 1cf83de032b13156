"""Helpers any family's stages share: synthetic data for mini runs, and the checks of the inputs a stage starts from
(upstream runs, weights, data files)."""

from __future__ import annotations

from pathlib import Path

from harness.errors import InputError
# Finding and reading an upstream run's checkpoint is the weight readers' job (the evaluation loaders do it too).
from model.weights import RANDOM_INIT, latest_checkpoint_dir
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


# ---------------------------------------------------------------------------------------------
# Input checks a stage runs before anything is built (`check_inputs`): the error names the key and how to set it.

def require_upstream(value: str, key: str, stage: str, upstream: str) -> bool:
    """Check the config key `key` that names the run of stage `upstream` this stage starts from.

    True: load it from `value` (which exists). False: `value` is "random-init", an explicit opt-in to random
    weights. Anything else is an InputError that names the key and shows how to set it."""
    if value == RANDOM_INIT:
        return False
    if not value:
        raise InputError(
            f"{key} is not set: stage {stage!r} starts from a trained {upstream!r} run. Train it first, e.g. "
            f"`python -m train {upstream} --config mini --output-dir runs/{upstream}`, then pass "
            f"`--set {key}=runs/{upstream}` (a run directory, one of its checkpoints/step_* directories, or a "
            f".safetensors file); `--set {key}={RANDOM_INIT}` starts from random weights instead (smoke tests only)"
        )
    if not Path(value).exists():
        raise InputError(
            f"{key}={value}: no such file or directory (expected the --output-dir of a `python -m train {upstream}` "
            f"run, one of its checkpoints/step_* directories, or a .safetensors file)"
        )
    resolved = Path(latest_checkpoint_dir(value))  # a run directory: its newest checkpoint that verifies
    weights = resolved / "model.safetensors" if resolved.is_dir() else resolved
    if weights.suffix == ".safetensors" and weights.is_file():
        _check_safetensors_header(weights, key)
    return True


def _check_safetensors_header(path: Path, key: str) -> None:
    """Read the header only (milliseconds): an empty, truncated or foreign file fails here, not after the model
    it would be loaded into has been built."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise InputError(f"{key}: {path} is not a readable .safetensors file ({' '.join(str(err).split())})") from None


def require_path(value: str, key: str, what: str) -> None:
    """An optional local path: "" is allowed (the stage says what it means), a given path must exist."""
    if value and not Path(value).exists():
        raise InputError(f"{key}={value}: no such file or directory ({what})")


def require_weights(value: str, key: str, what: str) -> None:
    """Optional weights ("" allowed: the stage says what it means): a given path must exist, and a run or
    checkpoint directory must hold a checkpoint that verifies (checked now, not after the model is built)."""
    require_path(value, key, what)
    if value:
        try:
            latest_checkpoint_dir(value)
        except InputError as err:
            raise InputError(f"{key}={value}: {err}") from None


def require_shards(patterns: list[str], key: str, synthetic: bool, required: bool = True) -> None:
    """Glob patterns of data files: each given one must match at least one file; none at all is an error when
    `required` and synthetic data (which fills in for an empty list) is off."""
    import glob

    if required and not synthetic and not patterns:
        raise InputError(f"{key} is empty: set it to glob patterns of the data files (--set '{key}=[/data/shard-*.tar]') or use synthetic.enabled=true")
    for pattern in patterns:
        if not glob.glob(pattern):
            raise InputError(f"{key}: pattern {pattern!r} matches no file")


