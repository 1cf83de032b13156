"""Process group, device and parallel wrapping (DDP / FSDP2 / activation checkpointing), applied from outside the model.

The training code calls `init_distributed()` once. It reads the standard env:// variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) that torchrun sets, or that `submitit.helpers.TorchDistributedEnvironment`
exports inside a SLURM task (see train/slurm.py). A plain single process gets a world of one on a private port,
so every code path (state-dict gathering, all-reduces) is the same with one process or many.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank of this process
    world_size: int  # number of processes in the job
    local_rank: int  # rank on this node (selects the GPU)
    device: torch.device  # where this process computes
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ENV_SET_HERE: dict[str, str] = {}  # env:// variables this module set for a world of one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: Literal["auto", "cpu", "cuda"] = "auto", backend: str = "auto") -> DistInfo:
    """Join (or create) the default process group and pick this process's device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but torch.cuda.is_available() is False")
    if backend == "auto":
        backend = "nccl" if device == "cuda" else "gloo"
    if "RANK" not in os.environ:
        # A single process not started by torchrun/SLURM: a world of one on a free local port.
        own = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ.update(own)
        _ENV_SET_HERE.update(own)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    for key in _ENV_SET_HERE:  # a later run in this process gets a fresh world of one
        os.environ.pop(key, None)
    _ENV_SET_HERE.clear()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (float64, so counts and sums stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one in a world of one)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------------------------------------
# Parallel wrapping. The model knows nothing of this; a stage names its repeated blocks (the unit of
# activation checkpointing and of FSDP sharding) through `block_types`.


def apply_activation_checkpointing(model: nn.Module, block_types: tuple[type, ...]) -> int:
    """Wrap every submodule of one of `block_types` so its activations are recomputed in backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing as _apply,
        checkpoint_wrapper,
    )

    if not block_types:
        raise ValueError("activation checkpointing needs the block types to wrap; the stage named none")
    count = sum(isinstance(m, block_types) for m in model.modules())
    _apply(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, block_types),
    )
    return count


def parallelize(
    model: nn.Module,
    info: DistInfo,
    strategy: Literal["auto", "none", "ddp", "fsdp"],
    block_types: tuple[type, ...] = (),
) -> nn.Module:
    """DDP or FSDP2 (`fully_shard` on each block, then on the root), as in torchtitan's parallelize."""
    if strategy == "auto":
        strategy = "ddp" if info.world_size > 1 else "none"
    if strategy == "none":
        if info.world_size > 1:
            raise ValueError(f"strategy 'none' with world_size={info.world_size}: gradients would not be averaged")
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        # Frozen parts (encoder, tokenizer) have no grads; find_unused_parameters covers steps where a branch
        # of the model is not used (e.g. a batch without images).
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for module in list(model.modules()):
            if block_types and isinstance(module, block_types) and any(p.requires_grad for p in module.parameters()):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r}; expected auto, none, ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    """The user module under a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation window."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        if enabled:
            yield
        else:
            with model.no_sync():
                yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield
