"""Checkpoints: everything needed to continue a run bit for bit, written atomically, verified, found again on start.

A checkpoint is one directory `step_XXXXXXXX/` in one of two layouts (`loop.checkpoint_format`):

full (one process; the default there):
    model.safetensors   parameters and buffers (full, unsharded), except frozen pretrained parts the stage
                        rebuilds from their source (its `checkpoint_exclude` prefixes, e.g. the ViT encoder)
    optimizer.pt        full optimizer state keyed by parameter name (AdamW moments, step counts, groups)
sharded (several processes; the default there):
    dcp/                model and optimizer state through `torch.distributed.checkpoint` (DCP): every rank writes
                        its own shard (FSDP2) or its share of the replicated tensors (DDP) in parallel, and DCP
                        reshards on load, so a run resumes on any number of processes (as torchtitan does)
    model.safetensors   only in the run's last checkpoint: the full weights as an export (what the next stage and
                        the evaluation loaders read)
both:
    trainer.pt          step, LR-scheduler state, the stage's own state
    rank_XXXXX.pt       per process: RNG states (python, numpy, torch CPU/CUDA) and the data-stream position
    manifest.json       written last: step, world size, layout, and the size and SHA-256 of every file.

All ranks write into a hidden temporary directory; after a barrier the files are hashed (each rank hashes its share),
rank 0 writes the manifest and renames the directory into place, so a crash at any moment leaves either the previous
checkpoint or the new one. On start the newest checkpoint is verified against its manifest (sizes and checksums);
a damaged one (a truncated file, a disk error) is moved to `checkpoints/corrupt/` -- never deleted -- with a message
naming the first bad file, and the run resumes from the newest checkpoint that verifies. When none does, nothing is
moved and the run stops with an error that lists what is wrong with each.

`.pt` files hold only tensors and plain containers and are read with `torch.load(weights_only=True)`. Loading is
strict: the checkpoint must hold exactly the model's keys minus the excluded prefixes.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.io import atomic_write_bytes, atomic_write_json, file_digest
# Reading and verifying checkpoints lives with the weight readers (the evaluation loaders use it too); these names
# stay importable from here.
from model.weights import (  # noqa: F401
    DCP_DIR,
    MANIFEST,
    CheckpointError,
    check_file,
    latest_verified,
    read_checkpoint_weights,
    read_manifest,
    step_dirs,
    verify_checkpoint,
)
from model.weights import dcp_model_state as _dcp_model_state
from train.distributed import DistInfo, barrier

MANIFEST_VERSION = 2
CORRUPT_DIR = "corrupt"  # damaged checkpoints are moved here (inside the checkpoint directory), never deleted


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


def _digests_collective(tmp: Path, info: DistInfo) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `tmp` (relative names), each rank hashing its share."""
    from train.distributed import all_gather_object, broadcast_object

    names = None
    if info.is_main:
        names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
    names = broadcast_object(names)
    mine = {name: file_digest(tmp / name) for i, name in enumerate(names) if i % info.world_size == info.rank}
    merged: dict[str, dict[str, Any]] = {}
    for part in all_gather_object(mine):
        merged.update(part)
    return {name: merged[name] for name in names}


# ---------------------------------------------------------------------------------------------
# Model and optimizer state (works unchanged for a plain module, DDP and FSDP2).


def _state_dict_options(full: bool = True, **kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, **kwargs)


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


def gather_model(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> dict:
    """The full model state dict on CPU (complete on rank 0 under FSDP2), without the excluded prefixes."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model_sd = get_model_state_dict(model, options=_state_dict_options(cpu_offload=True))
    return {k: v for k, v in model_sd.items() if not k.startswith(exclude_prefixes)} if exclude_prefixes else model_sd


def _expected_model_keys(model: nn.Module, exclude_prefixes: tuple[str, ...]) -> set[str]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    keys = get_model_state_dict(model, options=_state_dict_options(full=False)).keys()
    return {k for k in keys if not k.startswith(exclude_prefixes)} if exclude_prefixes else set(keys)


def check_model_keys(source: str | Path, saved: set[str], expected: set[str]) -> None:
    """Strict loading: the checkpoint holds exactly the model's keys (minus the excluded, rebuilt parts)."""
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not fit this model: {len(missing)} keys missing (e.g. {missing[:4]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}); was it written with another model config?"
        )


def load_model_and_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optim_sd: dict | None) -> None:
    """Every rank passes the full dicts (read from the shared checkpoint directory); FSDP2 keeps its shard.

    The caller has checked the keys (`check_model_keys`); strict=False only lets the excluded frozen parts, which
    are not in the checkpoint, keep the values the stage loaded from their source."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    if optimizer is None:
        set_model_state_dict(model, model_sd, options=_state_dict_options(strict=False))
    else:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=_state_dict_options(strict=False))


def _parameter_fqns(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> the name state dicts use for it (no DDP `module.` prefix, no activation-checkpoint or
    torch.compile wrapper segments), as torch.distributed.checkpoint.state_dict names them."""
    from train.distributed import unwrap

    out = {}
    for name, p in unwrap(model).named_parameters():
        parts = [part for part in name.split(".") if part not in ("_checkpoint_wrapped_module", "_orig_mod")]
        out[id(p)] = ".".join(parts)
    return out


def drop_unsaved_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: set[str]) -> None:
    """Loading initialises AdamW state for every parameter (a zero-gradient step); a parameter that had no state when
    the checkpoint was written (no gradient yet, e.g. before a stage switch) must start fresh, as in the
    uninterrupted run, not with a step count of 1."""
    fqns = _parameter_fqns(model)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if fqns.get(id(p)) not in saved:
                optimizer.state.pop(p, None)


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


def _same(a: Any, b: Any) -> bool:
    """Structural equality of plain containers holding tensors (data-stream states)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    step: int  # optimizer steps completed when the checkpoint was written
    path: Path  # the checkpoint directory
    trainer_state: dict[str, Any]  # scheduler, stage state, ... (from trainer.pt)
    rank_state: dict[str, Any]  # this rank's RNG ("rng": None when the saved world had no such rank) and data position
    saved_world_size: int = 1  # processes that wrote it


class CheckpointManager:
    """Owns the checkpoint directory: interval, atomic save, keep-last-k, verification and fall-back on resume."""

    def __init__(
        self,
        directory: str | Path,
        info: DistInfo,
        keep_last: int = 2,
        exclude_prefixes: tuple[str, ...] = (),
        layout: str = "auto",
    ):
        self.directory = Path(directory)
        self.info = info
        self.keep_last = keep_last
        self.exclude_prefixes = tuple(exclude_prefixes)  # model keys not written (rebuilt from their source)
        if layout == "auto":
            layout = "sharded" if info.world_size > 1 else "full"
        if layout not in ("full", "sharded"):
            raise ValueError(f"checkpoint layout {layout!r}: expected auto, full or sharded")
        self.layout = layout

    # -- finding ------------------------------------------------------------------------------

    def valid_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of complete checkpoints, oldest first: manifest present, every file there at its recorded
        size (no checksums: cheap enough for pruning; `find_resume` verifies checksums before loading)."""
        return [(s, p) for s, p in step_dirs(self.directory) if verify_checkpoint(p, checksum=False) is None]

    def latest(self) -> Path | None:
        valid = self.valid_checkpoints()
        return valid[-1][1] if valid else None

    def _verify_collective(self, path: Path) -> str | None:
        """`verify_checkpoint` with the files split over the ranks; every rank gets the same answer (the problem
        of the first bad file in manifest order)."""
        from train.distributed import all_gather_object

        problem = verify_checkpoint(path, checksum=True, rank=self.info.rank, world_size=self.info.world_size)
        if self.info.world_size == 1:
            return problem
        problems = [p for p in all_gather_object(problem) if p]
        if not problems:
            return None
        try:  # report the first in manifest order (the order a single process would have found them in)
            order = list(read_manifest(path)["files"])
            return min(problems, key=lambda p: next((i for i, n in enumerate(order) if f"/{n}:" in p), -1))
        except CheckpointError as err:
            return str(err)

    def find_resume(self) -> Path | None:
        """The newest checkpoint that verifies; damaged newer ones are moved to `corrupt/` (with a message).

        None when there is no checkpoint at all (a fresh run). When there are checkpoints but none verifies,
        nothing is moved and CheckpointError lists the problem of each."""
        candidates = step_dirs(self.directory)
        bad: list[tuple[Path, str]] = []
        for _, path in reversed(candidates):
            problem = self._verify_collective(path)
            if problem is None:
                if bad and self.info.is_main:
                    for damaged, reason in bad:
                        moved = self._move_aside(damaged)
                        print(f"[checkpoint] {reason}; moved {damaged.name} to {moved} and resuming from {path.name}", flush=True)
                barrier()
                return path
            bad.append((path, problem))
        if bad:
            listing = "; ".join(reason for _, reason in bad)
            raise CheckpointError(
                f"no valid checkpoint in {self.directory} ({len(bad)} found, none verifies: {listing}). Nothing was "
                f"moved or changed. Restore a good copy, or start afresh in another --output-dir"
            )
        return None

    def _move_aside(self, path: Path) -> Path:
        target_dir = self.directory / CORRUPT_DIR
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        n = 1
        while target.exists():
            target = target_dir / f"{path.name}.{n}"
            n += 1
        os.replace(path, target)
        return target

    # -- saving -------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        export_full: bool = False,
    ) -> Path:
        """Collective: every rank calls it at the same step. `export_full` also writes model.safetensors in the
        sharded layout (the last checkpoint of a run: what the next stage and the evaluation read)."""
        from safetensors.torch import save as safetensors_save

        final = self.directory / step_dir_name(step)
        tmp = self.directory / f".{step_dir_name(step)}.tmp"
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        atomic_write_bytes(tmp / f"rank_{self.info.rank:05d}.pt", _torch_save_bytes(rank_state))
        if self.layout == "full":
            model_sd, optim_sd = gather_model_and_optimizer(model, optimizer, self.exclude_prefixes)  # collective
            if self.info.is_main:
                atomic_write_bytes(tmp / "model.safetensors", safetensors_save(_tensors_for_safetensors(model_sd)))
                atomic_write_bytes(tmp / "optimizer.pt", _torch_save_bytes(optim_sd))
            del model_sd, optim_sd
        else:
            self._save_sharded(tmp / DCP_DIR, model, optimizer)
            if export_full:  # the weights only (never the full optimizer state on one process)
                model_sd = gather_model(model, self.exclude_prefixes)  # collective
                if self.info.is_main:
                    atomic_write_bytes(tmp / "model.safetensors", safetensors_save(_tensors_for_safetensors(model_sd)))
                del model_sd
        if self.info.is_main:
            atomic_write_bytes(tmp / "trainer.pt", _torch_save_bytes(trainer_state))
        barrier()
        files = _digests_collective(tmp, self.info)
        if self.info.is_main:
            manifest = {
                "format_version": MANIFEST_VERSION,
                "step": step,
                "world_size": self.info.world_size,
                "layout": self.layout,
                "files": files,
            }
            atomic_write_json(tmp / MANIFEST, manifest)
            if final.exists():  # the same step written again after a resume: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        barrier()
        return final

    def _sharded_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        """This rank's part of the model and optimizer state (DTensor shards under FSDP2), the DCP layout."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if optimizer is None:
            model_sd, optim_sd = get_model_state_dict(model, options=_state_dict_options(full=False)), None
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options(full=False))
        if self.exclude_prefixes:
            model_sd = {k: v for k, v in model_sd.items() if not k.startswith(self.exclude_prefixes)}
        return {"model": model_sd} if optim_sd is None else {"model": model_sd, "optim": optim_sd}

    def _save_sharded(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(model, optimizer), checkpoint_id=str(directory))  # plain open(): umask modes

    def _prune(self) -> None:
        valid = self.valid_checkpoints()
        for _, path in valid[: max(0, len(valid) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.directory.glob(".step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)

    # -- loading ------------------------------------------------------------------------------

    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> LoadedCheckpoint:
        path = Path(path)
        meta = read_manifest(path)
        layout = meta.get("layout", "full")
        saved_world = int(meta["world_size"])
        rank_state = self._rank_state(path, saved_world)  # checks the world-size change before any heavy loading
        if layout == "sharded":
            self._load_sharded(path / DCP_DIR, model, optimizer)
        else:
            from safetensors.torch import load_file

            model_sd = load_file(str(path / "model.safetensors"))
            check_model_keys(path / "model.safetensors", set(model_sd), _expected_model_keys(model, self.exclude_prefixes))
            optim_sd = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else None
            load_model_and_optimizer(model, optimizer, model_sd, optim_sd)
            if optimizer is not None:
                drop_unsaved_optimizer_state(model, optimizer, set(optim_sd["state"]))
        trainer_state = torch.load(path / "trainer.pt", weights_only=True)
        return LoadedCheckpoint(step=meta["step"], path=path, trainer_state=trainer_state, rank_state=rank_state, saved_world_size=saved_world)

    def _rank_state(self, path: Path, saved_world: int) -> dict[str, Any]:
        """This rank's RNG and data position. On another world size the data positions carry over only when every
        saved rank had the same one (a stream every rank reads whole and strides, e.g. data.partition=sequence)."""
        rank = self.info.rank
        if saved_world == self.info.world_size:
            return torch.load(path / f"rank_{rank:05d}.pt", weights_only=True)
        states = [torch.load(path / f"rank_{r:05d}.pt", weights_only=True) for r in range(saved_world)]
        if not all(_same(s["data"], states[0]["data"]) for s in states[1:]):
            raise CheckpointError(
                f"checkpoint {path} was written by {saved_world} processes, this run has {self.info.world_size}: the "
                f"model and optimizer reshard, but each process had its own data-stream position, which cannot be "
                f"carried over exactly. Resume with {saved_world} processes, or use a stream that every process reads "
                f"whole (e.g. data.partition=sequence)"
            )
        state = dict(states[rank]) if rank < saved_world else {"data": states[0]["data"], "rng": None}
        if self.info.is_main:
            print(
                f"[checkpoint] {path.name}: written by {saved_world} processes, resumed by {self.info.world_size}: model "
                f"and optimizer resharded, data position carried over (the same on every process)",
                flush=True,
            )
        return state

    def _load_sharded(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
        saved_model = {k[len("model."):] for k in saved if k.startswith("model.")}
        check_model_keys(directory, saved_model, _expected_model_keys(model, self.exclude_prefixes))
        state = self._sharded_state(model, optimizer)
        saved_optim: set[str] = set()
        if optimizer is not None:  # only the parameters that had optimizer state when it was written
            saved_optim = {fqn for fqn in state["optim"]["state"] if any(k.startswith(f"optim.state.{fqn}.") for k in saved)}
            state["optim"]["state"] = {k: v for k, v in state["optim"]["state"].items() if k in saved_optim}
        dcp.load(state, checkpoint_id=str(directory))  # reshards onto this run's layout
        options = _state_dict_options(full=False, strict=False)  # keys checked above; excluded parts stay as built
        if optimizer is None:
            set_model_state_dict(model, state["model"], options=options)
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)
            drop_unsaved_optimizer_state(model, optimizer, saved_optim)


def export_full_weights(checkpoint: str | Path, out_file: str | Path) -> Path:
    """A checkpoint's model weights as one full .safetensors file, from either layout (run in one process)."""
    from safetensors.torch import save as safetensors_save

    checkpoint = Path(checkpoint)
    meta = read_manifest(checkpoint)
    if meta.get("layout", "full") == "full" or (checkpoint / "model.safetensors").is_file():
        data = (checkpoint / "model.safetensors").read_bytes()
    else:
        data = safetensors_save(_tensors_for_safetensors(_dcp_model_state(checkpoint, scratch=Path(out_file).parent)))
    return atomic_write_bytes(out_file, data)


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
