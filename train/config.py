"""Training configs shared by every stage of every model family: the loop, the optimizer, parallelism, data.

A family declares its stages (`train/registry.py`); each stage's config dataclass nests these pieces and has
`paper` and `mini` presets in the preset group `train/<stage>`.

No torch import here: `python -m train --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal



def preset_group(stage: str) -> str:
    return f"train/{stage}"


# ---------------------------------------------------------------------------------------------
# Pieces shared by every stage.


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak learning rate of the default ("visual") parameter group
    group_lr: dict[str, float] = field(default_factory=dict)  # peak LR per named parameter group (stage 2: {"llm": 5e-5})
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW beta1, beta2
    eps: float = 1e-6  # AdamW epsilon
    weight_decay: float = 0.01  # decoupled weight decay (not applied to biases and norm weights)
    schedule: Literal["cosine", "constant"] = "cosine"  # LR after warm-up
    warmup_steps: int = 4000  # linear warm-up from 0 to the peak
    min_lr_ratio: float = 0.0  # final LR of the cosine as a fraction of the peak (not in the paper: 0)
    grad_clip: float = 1.0  # max global gradient norm (0 disables)


@dataclass
class LoopConfig:
    steps: int = 50_000  # optimizer steps
    global_batch_size: int = 2048  # samples (stage 1) or packed sequences (stage 2) per optimizer step
    micro_batch_size: int = 8  # per process and forward pass; accumulation = global / (micro * world)
    seed: int = 0  # model init, data order, sampling noise
    log_every: int = 1  # steps between metric lines
    checkpoint_every: int = 1000  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    checkpoint_format: Literal["auto", "full", "sharded"] = "auto"  # auto: sharded (torch.distributed.checkpoint)
    # with several processes, full (model.safetensors + optimizer.pt) with one; resume reads either (train/checkpoint.py)
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    max_steps_this_run: int = 0  # stop (after checkpointing) once this many steps ran in this process; 0 = no limit


@dataclass
class DistConfig:
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: DDP when more than one process
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast for the forward pass; master weights stay fp32
    activation_checkpointing: bool = False  # recompute each transformer block's activations in backward


@dataclass
class ImageTextDataConfig:
    shards: list[str] = field(default_factory=list)  # glob patterns of tar shards (img2dataset layout)
    partition: Literal["sample", "shard"] = "sample"  # how ranks split the stream (see train/data.py)


@dataclass
class SyntheticDataConfig:
    enabled: bool = False  # write deterministic synthetic shards/JSONL under OUTPUT/synthetic_data and use them
    num_shards: int = 2  # tar shards of captioned shape images
    samples_per_shard: int = 32  # samples per shard
    image_size: int = 64  # pixels per side of the written JPEGs
    text_docs: int = 64  # JSONL documents per text source


