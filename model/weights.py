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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from harness.errors import InputError

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
