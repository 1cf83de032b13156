"""Reading weight files, for every family's loaders (released layouts and our own run checkpoints).

- `resolve_file`: ``x.bin`` or its ``x.safetensors`` twin (released files come in either form).
- `read_state_dict`: one file, ``.safetensors`` or ``torch.load(weights_only=True, mmap=True)``; never pickles code.
- `sharded_weight_files` / `read_sharded_state_dict`: a transformers model folder (LLaMA and the like): the shards
  an ``*.index.json`` lists, else every ``*.safetensors``, else every ``pytorch_model*.bin``.
- `check_state_dict`: the strict check every loader runs before `load_state_dict`: a file whose keys or shapes do
  not match gets one `CheckpointLayoutError` naming the file and exactly which keys are missing, which are
  unexpected and which have the wrong shape (both shapes), the first few of each with counts.
- `strip_prefix`: files are accepted with or without their module prefix (``encoder.``).
- `weight_shapes` / `sharded_weight_shapes`: the keys, shapes and dtypes of weight files as meta tensors (for the
  strict check before anything is loaded); the streaming loaders then read one file at a time.
- Our runs' checkpoints (`train/checkpoint.py` writes them): `verify_checkpoint` / `latest_verified` (the manifest's
  sizes and SHA-256), `read_checkpoint_weights` (either layout), `latest_checkpoint_dir` and `read_weights` (a run
  directory, a checkpoint directory or a weights file, as the config keys naming an upstream run accept them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.errors import InputError
from harness.io import file_digest

SHOW_KEYS = 8  # how many keys of each kind an error message lists
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip  (header dtype names)
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # safetensors first, as transformers


class CheckpointLayoutError(InputError):
    """Weights whose keys or shapes do not match the model, or a directory that is not a known checkpoint layout
    (bad input: the commands print it as one `error:` line, exit 2)."""


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    more = f", ... (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else ""
    return f"{len(keys)} ({shown}{more})"


def resolve_file(path: str | Path) -> Path:
    """``x.bin`` if present, else its ``x.safetensors`` twin; FileNotFoundError naming both otherwise."""
    path = Path(path)
    twin = path.with_suffix(".safetensors")
    for candidate in (path, twin):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"checkpoint file not found: {path} (nor {twin.name})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors file or a torch file (weights_only; a {"state_dict": ...} wrapper
    is unwrapped). Anything else is a CheckpointLayoutError naming the file."""
    path = resolve_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap is unavailable, read it fully
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLayoutError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
    return state


def weight_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: meta tensor with the file's shape and dtype} of one weight file, without keeping its data in memory
    (safetensors: the header only; torch files: memory-mapped, then dropped)."""
    path = resolve_file(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                dtype = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)  # only shapes are checked
                out[k] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
        return out
    return {k: torch.empty_like(v, device="meta") for k, v in read_state_dict(path).items()}


def sharded_weight_shapes(folder: str | Path) -> dict[str, torch.Tensor]:
    """`weight_shapes` of every shard of `sharded_weight_files(folder)` merged (a key in two shards is an error)."""
    return _merge_shards(folder, weight_shapes)


def sharded_weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a transformers model folder: the shards of ``model.safetensors.index.json`` or
    ``pytorch_model.bin.index.json`` (each must exist), else every ``*.safetensors``, else every
    ``pytorch_model*.bin`` (sorted). FileNotFoundError naming the folder when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise CheckpointLayoutError(f"{index}: not a shard index with a 'weight_map' ({err})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shards that do not exist: {missing}")
            return files
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(
            f"no weights in {folder}: expected *.safetensors or pytorch_model*.bin (with or without an *.index.json)"
        )
    return files


def read_sharded_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All shards of `sharded_weight_files(folder)` merged; a key found in two shards is an error naming both."""
    return _merge_shards(folder, read_state_dict)


def _merge_shards(folder: str | Path, read: Callable[[Path], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`read(shard)` of every shard, merged; a key found in two shards is an error naming both files."""
    merged: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for path in sharded_weight_files(folder):
        shard = read(path)
        twice = [k for k in shard if k in merged]
        if twice:
            raise CheckpointLayoutError(f"{path}: keys also in {origin[twice[0]]}: {_describe(sorted(twice))}")
        merged.update(shard)
        origin.update(dict.fromkeys(shard, path))
    return merged


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` when every key carries it (files are accepted with or without the module prefix)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def check_state_dict(
    source: str | Path,
    state: dict[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    *,
    required: Iterable[str] | None = None,
    tolerated_suffixes: tuple[str, ...] = (),
    what: str = "the model",
) -> list[str]:
    """Strict check of `state` (read from `source`) against `expected` {key: shape}.

    required: the keys that must be present (default: every expected key); every key of `state` must be expected.
    tolerated_suffixes: extra keys ending so (e.g. rotary ``inv_freq`` buffers old transformers saved) are removed
    from `state` in place and returned, instead of being errors.
    Raises CheckpointLayoutError naming `source`, `what`, and the missing, unexpected and mis-shaped keys.
    """
    ignored = [k for k in state if k not in expected and k.endswith(tolerated_suffixes)] if tolerated_suffixes else []
    for k in ignored:
        del state[k]
    required = expected.keys() if required is None else required
    missing = sorted(k for k in required if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k]
    )
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)}")
    if wrong:
        parts.append(f"shape mismatches: {_describe(wrong)}")
    if parts:
        raise CheckpointLayoutError(f"{source}: weights do not match {what}; " + "; ".join(parts))
    return ignored


# ---------------------------------------------------------------------------------------------
# Our runs' checkpoints (written by `train/checkpoint.py`, which documents the two layouts): found, verified against
# their manifest (sizes and SHA-256), read. Here, below `train/`, because the evaluation loaders and the next stage of
# a chain read them too.

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
DCP_DIR = "dcp"
RANDOM_INIT = "random-init"  # the explicit value of an upstream key that starts from random weights (tests, smoke runs)


class CheckpointError(InputError):
    """A checkpoint that cannot be used as asked: never completed, damaged, or not what the run is configured for;
    the message says which file or setting is wrong."""


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint directory `path`; raises CheckpointError when it is missing or unreadable."""
    path = Path(path)
    file = path / MANIFEST
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (the checkpoint was never completed)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    match = _STEP_DIR.match(path.name)
    if not isinstance(meta, dict) or "step" not in meta or "files" not in meta:
        raise CheckpointError(f"{file}: not a checkpoint manifest (no step / files)")
    if match and meta["step"] != int(match.group(1)):
        raise CheckpointError(f"{file}: says step {meta['step']}, the directory is {path.name}")
    if isinstance(meta["files"], list):  # written before checksums were recorded: presence is all we can check
        meta["files"] = {name: {} for name in meta["files"]}
    return meta


def check_file(path: Path, name: str, expected: dict[str, Any], checksum: bool = True) -> str | None:
    """What is wrong with file `name` of checkpoint `path` (None when it matches the manifest)."""
    file = path / name
    if not file.is_file():
        return f"{file}: missing"
    size = file.stat().st_size
    if "size" in expected and size != expected["size"]:
        return f"{file}: {size} bytes, the manifest says {expected['size']} (truncated or overwritten)"
    if checksum and "sha256" in expected and file_digest(file)["sha256"] != expected["sha256"]:
        return f"{file}: SHA-256 differs from the manifest (corrupted)"
    return None


def verify_checkpoint(path: str | Path, checksum: bool = True, rank: int = 0, world_size: int = 1) -> str | None:
    """The first problem of checkpoint `path` (manifest, then each file in manifest order), or None if it verifies.

    With several processes each checks every world_size-th file (rank, rank + W, ...); see
    `train.checkpoint.CheckpointManager._verify_collective`."""
    path = Path(path)
    try:
        meta = read_manifest(path)
    except CheckpointError as err:
        return str(err)
    for i, (name, expected) in enumerate(meta["files"].items()):
        if i % world_size != rank:
            continue
        problem = check_file(path, name, expected, checksum)
        if problem:
            return problem
    return None


def step_dirs(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_XXXXXXXX` directory, verified or not, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_verified(directory: str | Path) -> tuple[Path | None, list[str]]:
    """Newest checkpoint under `directory` that verifies (checksums included), and the problems of newer ones."""
    problems = []
    for _, path in reversed(step_dirs(directory)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, problems
        problems.append(problem)
    return None, problems


def dcp_model_state(checkpoint: Path, scratch: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The full model state of a sharded checkpoint, its DCP shards merged in this one process."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        dcp_to_torch_save(str(checkpoint / DCP_DIR), f"{tmp}/state.pt")
        state = torch.load(f"{tmp}/state.pt", weights_only=True)
    return state["model"]


def read_checkpoint_weights(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The model weights of one checkpoint directory (either layout) and the file they came from.

    model.safetensors where the checkpoint has one (every full-layout checkpoint, and the last one of a sharded run);
    else the DCP shards of a sharded checkpoint written before the end of its run, merged here. The caller chose a
    checkpoint that verifies (`latest_verified`, `latest_checkpoint_dir`)."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    file = checkpoint / "model.safetensors"
    if file.is_file():
        return load_file(str(file)), file
    meta = read_manifest(checkpoint)
    if meta.get("layout", "full") != "sharded" or not (checkpoint / DCP_DIR).is_dir():
        raise CheckpointError(f"{checkpoint}: no model.safetensors and no {DCP_DIR}/ shards (not a complete checkpoint)")
    return dcp_model_state(checkpoint), checkpoint / DCP_DIR


def latest_checkpoint_dir(path: str) -> str:
    """A run directory (OUTPUT with checkpoints/step_*) -> its newest checkpoint that verifies against its manifest
    (sizes and checksums); one checkpoint directory (with a manifest.json) -> itself, once it verifies; anything else
    unchanged. A run with checkpoints of which none verifies, or a given checkpoint that does not, is an error."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        problem = verify_checkpoint(p)
        if problem:
            raise InputError(f"{path}: the checkpoint does not verify ({problem})")
        return path
    if not (p / "checkpoints").is_dir():
        return path
    found, problems = latest_verified(p / "checkpoints")
    if found is None:
        if problems:
            raise InputError(f"{path}: no checkpoint of this run verifies ({'; '.join(problems)})")
        return path
    if problems:
        print(f"[upstream] {path}: skipping damaged newer checkpoints ({'; '.join(problems)}); using {found.name}", flush=True)
    return str(found)


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights at `path` and the file they came from: a run directory (its newest checkpoint that
    verifies), one checkpoint directory (either layout: `read_checkpoint_weights`), or a weights
    file (.safetensors, or a torch file read with weights_only). Other directories are a FileNotFoundError."""
    p = Path(latest_checkpoint_dir(path))
    if p.is_dir() and not (p / MANIFEST).is_file() and (p / "model.safetensors").is_file():
        p = p / "model.safetensors"  # weights exported on their own, outside a run
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: a directory without checkpoints/step_*/ or {MANIFEST} (expected a run directory, a checkpoint directory or a weights file)")
        state, file = read_checkpoint_weights(p)
        return state, str(file)
    return read_state_dict(p), str(p)  # FileNotFoundError naming the file
