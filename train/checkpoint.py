"""Checkpoints: everything needed to continue a run bit for bit, written atomically, found again on start.

A checkpoint is one directory `step_XXXXXXXX/`:

    model.safetensors   parameters and buffers (full, unsharded), except frozen pretrained parts the stage
                        rebuilds from their source (its `checkpoint_exclude` prefixes, e.g. the ViT encoder)
    optimizer.pt        full optimizer state keyed by parameter name (AdamW moments, step counts, groups)
    trainer.pt          step, LR-scheduler state, the stage's own state
    rank_XXXXX.pt       per process: RNG states (python, numpy, torch CPU/CUDA) and the data-stream position
    manifest.json       written last: step, world size, file list. A directory without it is incomplete.

All ranks write into a hidden temporary directory; after a barrier rank 0 writes the manifest and renames the
directory into place, so a crash at any moment leaves either the previous checkpoint or the new one, never a
half-written one. `.pt` files hold only tensors and plain containers and are read with
`torch.load(weights_only=True)`.

FSDP2 and DDP are handled by `torch.distributed.checkpoint.state_dict` with `full_state_dict=True`: the saved
files do not depend on the number of processes, so a run can resume on a different world size (only the
per-rank data positions then cannot be carried over, which is an error that says so).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.io import atomic_write_bytes, atomic_write_json
from train.distributed import DistInfo, barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------
# RNG state as weights_only-loadable values.


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate wants nested tuples; the pickle round trip may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# Model and optimizer state (works unchanged for a plain module, DDP and FSDP2).


def _state_dict_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_model_and_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, exclude_prefixes: tuple[str, ...] = ()
) -> tuple[dict, dict]:
    """Full (unsharded) state dicts on CPU; complete on rank 0, empty on the others under FSDP2.

    Keys starting with one of `exclude_prefixes` (frozen pretrained parts the stage rebuilds from their source,
    e.g. the ViT encoder) are left out. Other frozen tensors stay in: an EMA codebook is frozen to the optimizer
    but is trained state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options(cpu_offload=True))
    if exclude_prefixes:
        model_sd = {k: v for k, v in model_sd.items() if not k.startswith(exclude_prefixes)}
    return model_sd, optim_sd


def load_model_and_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optim_sd: dict | None) -> None:
    """Every rank passes the full dicts (read from the shared checkpoint directory); FSDP2 keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    # strict=False: excluded frozen pretrained parameters are not in the checkpoint (see exclude_prefixes above).
    if optimizer is None:
        set_model_state_dict(model, model_sd, options=_state_dict_options(strict=False))
    else:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=_state_dict_options(strict=False))


def _tensors_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): give each key its own contiguous copy."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        t = value.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        seen.add(ptr)
        out[key] = t.cpu()
    return out


def _torch_save_bytes(obj: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    step: int  # optimizer steps completed when the checkpoint was written
    path: Path  # the checkpoint directory
    trainer_state: dict[str, Any]  # scheduler, stage state, ... (from trainer.pt)
    rank_state: dict[str, Any]  # this rank's RNG and data position


class CheckpointManager:
    """Owns the checkpoint directory: interval, atomic save, keep-last-k, and finding the latest valid one."""

    def __init__(self, directory: str | Path, info: DistInfo, keep_last: int = 2, exclude_prefixes: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.info = info
        self.keep_last = keep_last
        self.exclude_prefixes = tuple(exclude_prefixes)  # model keys not written (rebuilt from their source)

    # -- finding ------------------------------------------------------------------------------

    def valid_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of complete checkpoints, oldest first. Incomplete ones (no manifest, missing file) are skipped."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _STEP_DIR.match(path.name)
            if not match or not path.is_dir():
                continue
            manifest = path / MANIFEST
            try:
                meta = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("step") != int(match.group(1)):
                continue
            if not all((path / name).is_file() for name in meta.get("files", [])):
                continue
            found.append((meta["step"], path))
        return sorted(found)

    def latest(self) -> Path | None:
        valid = self.valid_checkpoints()
        return valid[-1][1] if valid else None

    # -- saving -------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
    ) -> Path:
        """Collective: every rank calls it at the same step."""
        from safetensors.torch import save as safetensors_save

        final = self.directory / step_dir_name(step)
        tmp = self.directory / f".{step_dir_name(step)}.tmp"
        model_sd, optim_sd = gather_model_and_optimizer(model, optimizer, self.exclude_prefixes)  # collective under FSDP2
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        files = [f"rank_{r:05d}.pt" for r in range(self.info.world_size)]
        atomic_write_bytes(tmp / files[self.info.rank], _torch_save_bytes(rank_state))
        if self.info.is_main:
            atomic_write_bytes(tmp / "model.safetensors", safetensors_save(_tensors_for_safetensors(model_sd)))
            atomic_write_bytes(tmp / "optimizer.pt", _torch_save_bytes(optim_sd))
            atomic_write_bytes(tmp / "trainer.pt", _torch_save_bytes(trainer_state))
        barrier()
        if self.info.is_main:
            files += ["model.safetensors", "optimizer.pt", "trainer.pt"]
            atomic_write_json(tmp / MANIFEST, {"step": step, "world_size": self.info.world_size, "files": files})
            if final.exists():  # the same step written again after a resume: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        valid = self.valid_checkpoints()
        for _, path in valid[: max(0, len(valid) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.directory.glob(".step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)

    # -- loading ------------------------------------------------------------------------------

    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> LoadedCheckpoint:
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / MANIFEST).read_text())
        if meta["world_size"] != self.info.world_size:
            raise RuntimeError(
                f"checkpoint {path} was written by {meta['world_size']} processes, this run has "
                f"{self.info.world_size}: the per-process data-stream positions cannot be carried over exactly. "
                f"Resume with {meta['world_size']} processes, or load only the weights (--set init_from={path})."
            )
        model_sd = load_file(str(path / "model.safetensors"))
        optim_sd = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else None
        load_model_and_optimizer(model, optimizer, model_sd, optim_sd)
        trainer_state = torch.load(path / "trainer.pt", weights_only=True)
        rank_state = torch.load(path / f"rank_{self.info.rank:05d}.pt", weights_only=True)
        return LoadedCheckpoint(step=meta["step"], path=path, trainer_state=trainer_state, rank_state=rank_state)


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Weights only (a checkpoint directory or a .safetensors file) into `model`, e.g. the tokenizer for stage 2."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no weights at {file} (expected a checkpoint directory or a .safetensors file)")
    missing, unexpected = model.load_state_dict(load_file(str(file)), strict=False)
    if unexpected:
        raise RuntimeError(f"{file}: {len(unexpected)} keys do not belong to {type(model).__name__}, e.g. {unexpected[:5]}")
    trainable_missing = [k for k in missing if k in dict(model.named_parameters()) and dict(model.named_parameters())[k].requires_grad]
    if trainable_missing:
        raise RuntimeError(f"{file}: trainable parameters missing from the checkpoint, e.g. {trainable_missing[:5]}")
