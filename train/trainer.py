"""The training loop shared by every stage.

A stage is a `Task`: it builds its trainable module (whose `forward(batch)` returns a `StepOutput`), names its
parameter groups and repeated blocks, and builds its data stream. The `Trainer` does the rest in a fixed order
each step, as in nanoGPT's train.py:

    stage hook -> fetch the step's micro-batches -> global normaliser (all-reduce) ->
    micro-steps (autocast forward, backward; gradient sync on the last one only) -> clip -> optimizer step ->
    LR schedule -> log -> checkpoint

Loss normalisation makes the result independent of how the global batch is split: each micro-batch returns the
*sum* of its per-unit losses (images, or supervised tokens) and the trainer divides by the number of units in the
whole global batch, counted over all micro-batches and ranks before the first backward. One process with 4
accumulation steps and two processes with 2 each therefore compute the same gradient, up to float rounding.

Resume is exact: the checkpoint holds model, optimizer, scheduler, the stage's state, per-rank RNG states and the
data-stream position, and the LR is a pure function of the step.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from harness.errors import InputError
from train.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from train.config import DistConfig, LoopConfig, OptimConfig
from train.distributed import DistInfo, all_reduce_sum, apply_activation_checkpointing, gradient_sync, parallelize, unwrap
from train.metrics import MetricsLogger, Throughput


@dataclass
class StepOutput:
    """What a trainable module's forward returns for one micro-batch."""

    loss_sum: torch.Tensor  # sum over this micro-batch's units of the per-unit loss (the objective)
    metric_sums: dict[str, torch.Tensor | float] = field(default_factory=dict)  # summed per unit, logged as means
    metric_values: dict[str, float] = field(default_factory=dict)  # logged as the mean over micro-batches and ranks
    metric_counts: dict[str, float] = field(default_factory=dict)  # logged as the total over micro-batches and ranks


class Task(Protocol):
    """What a stage supplies to the trainer."""

    unit: str  # name of the throughput unit ("tok", "img")

    def build_model(self, info: DistInfo) -> nn.Module: ...  # trainable module; forward(batch) -> StepOutput

    def block_types(self) -> tuple[type, ...]: ...  # repeated blocks: the unit of FSDP sharding and activation checkpointing

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]: ...  # group name -> params

    def build_data(self, info: DistInfo, micro_batch_size: int) -> Any: ...  # stateful iterator of micro-batches

    def units(self, batch: Any) -> int: ...  # loss units in a micro-batch (the normaliser's share)

    def throughput_amount(self, batch: Any) -> int: ...  # tokens (or images) processed, for tokens/s

    def on_step_start(self, step: int, model: nn.Module) -> dict[str, float]: ...  # stage schedule (e.g. switch VQ on)

    def checkpoint_exclude(self) -> tuple[str, ...]: ...  # model keys rebuilt from their source, not checkpointed

    def state_dict(self) -> dict[str, Any]: ...  # stage state that is not in the model's state_dict

    # Optional (called by `train.stages.run_stage` before anything is built or written, when the task has them):
    #   check_inputs() -> None                     raise harness.errors.InputError naming each missing required input
    #   parameter_counts() -> (trainable, frozen)  from shapes alone (meta device), for the memory check

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StatelessStage:
    """The Task hooks most stages leave as they are: no schedule, no state outside the model's state_dict."""

    def on_step_start(self, step: int, model: nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warm-up, then cosine (or constant) down to min_lr_ratio."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(groups: dict[str, list[tuple[str, nn.Parameter]]], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with one LR per named group; biases and 1-D (norm) weights get no weight decay.

    A group without trainable parameters (e.g. a frozen LLM in an ablation) is skipped with an info line; its
    `optim.group_lr` entry is then unused but not an error (the group exists, it is just frozen)."""
    unknown = set(optim.group_lr) - set(groups)
    if unknown:
        raise InputError(f"optim.group_lr names groups {sorted(unknown)} that the stage does not have ({sorted(groups)})")
    param_groups = []
    for name in sorted(groups):
        if not any(p.requires_grad for _, p in groups[name]):
            print(f"[train] optimizer: group {name!r} has no trainable parameters (frozen); skipped", flush=True)
            continue
        lr = optim.group_lr.get(name, optim.lr)
        decay = [p for n, p in groups[name] if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in groups[name] if p.requires_grad and p.ndim < 2]
        if decay:
            param_groups.append({"params": decay, "lr": lr, "weight_decay": optim.weight_decay, "name": f"{name}/decay"})
        if no_decay:
            param_groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"})
    if not param_groups:
        raise ValueError(f"no trainable parameters in groups {sorted(groups)}")
    return torch.optim.AdamW(param_groups, betas=tuple(optim.betas), eps=optim.eps, foreach=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(
        self,
        task: Task,
        info: DistInfo,
        output_dir: str | Path,
        optim: OptimConfig,
        loop: LoopConfig,
        dist: DistConfig,
    ):
        self.task, self.info, self.output_dir = task, info, Path(output_dir)
        self.optim_cfg, self.loop, self.dist = optim, loop, dist
        per_step = loop.micro_batch_size * info.world_size
        if loop.global_batch_size % per_step:
            raise InputError(
                f"global_batch_size={loop.global_batch_size} is not a multiple of micro_batch_size={loop.micro_batch_size}"
                f" x world_size={info.world_size} = {per_step}"
            )
        self.accumulation = loop.global_batch_size // per_step

    def _autocast(self):
        if self.dist.precision == "bf16":
            return torch.autocast(device_type=self.info.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.info.device.type, enabled=False)

    def fit(self, on_start: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train (or resume) to loop.steps. `on_start` runs once the checkpoint (if any) is loaded, before the first
        step (run_stage writes config.yaml there: a run that cannot resume leaves the directory as it was)."""
        info, loop = self.info, self.loop
        checkpoints = CheckpointManager(
            self.output_dir / "checkpoints",
            info,
            keep_last=loop.keep_checkpoints,
            exclude_prefixes=self.task.checkpoint_exclude(),
            layout=loop.checkpoint_format,
        )
        latest = checkpoints.find_resume()  # verified; damaged newer ones moved aside; before any model is built
        seed_everything(loop.seed)  # identical initial weights on every rank
        module = self.task.build_model(info).to(info.device)
        if self.dist.activation_checkpointing:
            apply_activation_checkpointing(module, self.task.block_types())
        model = parallelize(module, info, self.dist.strategy, self.task.block_types())
        optimizer = build_optimizer(self.task.param_groups(unwrap(model)), self.optim_cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, self.optim_cfg, loop.steps))
        seed_everything(loop.seed + 1_000_003 * (info.rank + 1))  # per-rank noise (Gumbel, dropout, diffusion t)
        data = self.task.build_data(info, loop.micro_batch_size)

        start_step = 0
        if latest is not None:
            loaded = checkpoints.load(latest, model, optimizer)
            for group in optimizer.param_groups:  # a round trip through the file turns the betas tuple into a list
                group["betas"] = tuple(group["betas"])
            scheduler.load_state_dict(loaded.trainer_state["scheduler"])
            self.task.load_state_dict(loaded.trainer_state["task"])
            data.load_state_dict(loaded.rank_state["data"])
            if loaded.rank_state["rng"] is not None:  # None: a rank the saved (smaller) world did not have
                restore_rng_state(loaded.rank_state["rng"])
            start_step = loaded.step
        if on_start is not None:
            on_start()
        logger = MetricsLogger(
            self.output_dir, info.is_main, loop.steps, start_step, progress=loop.progress, tensorboard=loop.tensorboard, unit=self.task.unit
        )
        throughput = Throughput()
        steps_this_run = 0
        last_record: dict[str, Any] = {}
        model.train()
        try:
            for step in range(start_step, loop.steps):
                hook_metrics = self.task.on_step_start(step, unwrap(model))
                lrs = {g["name"].split("/")[0]: g["lr"] for g in optimizer.param_groups}  # the LRs this step uses
                record = self._train_step(model, optimizer, data)
                scheduler.step()
                done = step + 1
                rate, seconds = throughput.rate(record.pop("_amount"))
                record.update(hook_metrics)
                record.update({f"{self.task.unit}_per_s": rate, "step_time_s": seconds})
                if hasattr(data, "stats"):  # corrupt/undecodable samples skipped so far, by reason (this rank)
                    record.update({f"data/{k}": v for k, v in data.stats().items() if "skipped" in k})
                record["lr"] = next(iter(lrs.values()))
                if len(lrs) > 1:
                    record.update({f"lr/{name}": lr for name, lr in lrs.items()})
                if done % loop.log_every == 0 or done == loop.steps:
                    logger.log(done, record)
                last_record = record
                steps_this_run += 1
                stop_early = loop.max_steps_this_run > 0 and steps_this_run >= loop.max_steps_this_run
                if done % loop.checkpoint_every == 0 or done == loop.steps or stop_early:
                    checkpoints.save(
                        done,
                        model,
                        optimizer,
                        trainer_state={"scheduler": scheduler.state_dict(), "task": self.task.state_dict()},
                        rank_state={"rng": capture_rng_state(), "data": data.state_dict()},
                        export_full=done == loop.steps,  # the run's weights in one file for the next stage
                    )
                if stop_early:
                    break
        finally:
            logger.close()
        data_stats = data.stats() if hasattr(data, "stats") else {}
        return {"last_step": start_step + steps_this_run, "start_step": start_step, "metrics": last_record, "data": data_stats, "model": model}

    def _train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Iterator) -> dict[str, Any]:
        info = self.info
        fetch_start = time.perf_counter()
        batches = [next(data) for _ in range(self.accumulation)]
        data_time = time.perf_counter() - fetch_start
        local_units = sum(self.task.units(b) for b in batches)
        global_units, global_amount = all_reduce_sum([local_units, sum(self.task.throughput_amount(b) for b in batches)], info.device)
        if global_units <= 0:
            raise RuntimeError("a global batch without a single loss unit (no images / no supervised tokens)")
        # DDP and FSDP average gradients over ranks; scaling by world / global_units turns that into a sum / units.
        scale = info.world_size / global_units
        loss_total = 0.0
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        values: dict[str, list[float]] = {}
        for i, batch in enumerate(batches):
            with gradient_sync(model, enabled=i == len(batches) - 1):
                with self._autocast():
                    out: StepOutput = model(batch)
                (out.loss_sum.float() * scale).backward()
            loss_total += float(out.loss_sum.detach())
            for k, v in out.metric_sums.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            for k, v in out.metric_values.items():
                values.setdefault(k, []).append(float(v))
            for k, v in out.metric_counts.items():
                counts[k] = counts.get(k, 0.0) + float(v)
        grad_norm = self._clip(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Step metrics: sums over all ranks / global units; values: mean over micro-batches and ranks.
        keys, vkeys, ckeys = sorted(sums), sorted(values), sorted(counts)
        reduced = all_reduce_sum(
            [loss_total] + [sums[k] for k in keys] + [sum(values[k]) / len(values[k]) for k in vkeys] + [counts[k] for k in ckeys],
            info.device,
        )
        record: dict[str, Any] = {"loss": reduced[0] / global_units}
        reduced = reduced[1:]
        record.update({k: v / global_units for k, v in zip(keys, reduced[: len(keys)])})
        reduced = reduced[len(keys) :]
        record.update({k: v / info.world_size for k, v in zip(vkeys, reduced[: len(vkeys)])})
        record.update(dict(zip(ckeys, reduced[len(vkeys) :])))
        record.update({"grad_norm": grad_norm, "units": global_units, "data_time_s": data_time, "_amount": global_amount})
        return record

    def _clip(self, model: nn.Module) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            norm = norm.full_tensor()
        return float(norm)
