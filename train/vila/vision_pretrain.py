"""Mini-world stand-in for the released CLIP ViT-L/14 (`vila_vision_pretrain`; not a stage of the paper).

VILA's vision tower (transformers CLIPVisionModel of `vision`, `model/vila/vision_tower.py`) is trained CLIP-style
against a small caption encoder of our own: image embedding = the tower's features at `vision.select_layer` (the
ones VILA's projector reads), mean-pooled, LayerNorm, Linear; caption embedding = byte embeddings, masked mean,
Linear. Loss: the symmetric InfoNCE over the micro-batch (the other pairs are the negatives) with a learned
temperature (log 1/T, clamped at 100 as CLIP's). Logged: loss, i2t_acc, logit_scale.

Checkpoint keys: `vision_tower.clip.*` (VilaForCausalLM's names; vila_projector loads them through
`vision_tower_path`), `text_encoder.*`, `image_head.*`, `logit_scale` (unused downstream). The tower's layers past
`select_layer` get no gradient (VILA never reads them) and keep their initial weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import InputError
from train.vila.config import VisionPretrainStageConfig
from train.data import Batched, ImageTextShards, Mapped
from train.distributed import DistInfo
from train.trainer import StatelessStage, StepOutput

MAX_LOGIT_SCALE = 100.0


class ByteCaptionEncoder(nn.Module):
    def __init__(self, width: int, out_dim: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(257, width, padding_idx=256)  # 256 bytes + pad
        self.proj = nn.Linear(width, out_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (b, L) -> (b, out_dim)
        mask = (ids != 256).unsqueeze(-1).float()
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.proj(pooled)


class ContrastiveModule(nn.Module):
    def __init__(self, cfg: VisionPretrainStageConfig):
        super().__init__()
        from model.vila.vision_tower import VisionTower

        self.vision_tower = VisionTower(cfg.vision)
        self.image_head = nn.Sequential(nn.LayerNorm(cfg.vision.hidden_size), nn.Linear(cfg.vision.hidden_size, cfg.embed_dim))
        self.text_encoder = ByteCaptionEncoder(cfg.text_width, cfg.embed_dim, cfg.text_max_len)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        pixels, ids = batch
        device = self.logit_scale.device
        image = F.normalize(self.image_head(self.vision_tower(pixels.to(device)).mean(1)).float(), dim=-1)
        text = F.normalize(self.text_encoder(ids.to(device)).float(), dim=-1)
        scale = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        logits = scale * image @ text.T  # (b, b)
        target = torch.arange(len(ids), device=device)
        per_pair = 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))
        correct = (logits.argmax(1) == target).float().sum()
        return StepOutput(loss_sum=per_pair.sum(), metric_sums={"i2t_acc": correct}, metric_values={"logit_scale": float(scale.detach())})


class VisionPretrainTask(StatelessStage):
    unit = "img"

    def __init__(self, cfg: VisionPretrainStageConfig, output_dir: Path):
        if cfg.released_stand_in:
            raise InputError(
                "vila_vision_pretrain: this preset stands for the released CLIP ViT-L/14-336 the paper does not train; "
                "pass it to vila_projector as vision_tower_path instead (or --set released_stand_in=false)"
            )
        if cfg.loop.micro_batch_size < 2:
            raise ValueError("loop.micro_batch_size must be >= 2: the other pairs of the micro-batch are the negatives")
        self.cfg = cfg
        self.output_dir = Path(output_dir)

    def check_inputs(self) -> None:
        import glob

        data = self.cfg.data
        if data.miniworld and not (Path(data.miniworld) / "DONE").is_file():
            raise InputError(f"data.miniworld={data.miniworld}: no complete mini world there (python -m harness.miniworld --root {data.miniworld})")
        if not data.shards and not data.miniworld:
            raise InputError("data.shards is empty: set it to image-text tar shards, or set data.miniworld")
        for pattern in data.shards:
            if not glob.glob(pattern):
                raise InputError(f"data.shards: pattern {pattern!r} matches no file")

    def parameter_counts(self) -> tuple[int, int]:
        with torch.device("meta"):
            module = ContrastiveModule(self.cfg)
        return sum(p.numel() for p in module.parameters()), 0

    def build_model(self, info: DistInfo) -> nn.Module:
        return ContrastiveModule(self.cfg)

    def block_types(self) -> tuple[type, ...]:
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        return (CLIPEncoderLayer,)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"vision": list(model.named_parameters())}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        return ()

    def build_data(self, info: DistInfo, micro_batch_size: int):
        from model.vila.vision_tower import preprocess_images

        cfg, data = self.cfg, self.cfg.data
        shards = list(data.shards) or [f"{data.miniworld}/shards/train-*.tar"]
        stream = ImageTextShards(shards, seed=cfg.loop.seed + 7, rank=info.rank, world_size=info.world_size, partition=data.partition)
        wanted = dict(data.meta_filter)
        kept = Mapped(stream, lambda s: s if all(str(s.meta.get(k)) == v for k, v in wanted.items()) else None)

        def collate(samples):
            pixels = preprocess_images([s.image for s in samples], cfg.vision)
            L = cfg.text_max_len
            ids = torch.full((len(samples), L), 256, dtype=torch.long)
            for i, s in enumerate(samples):
                raw = list(s.text.encode("utf-8"))[:L]
                ids[i, : len(raw)] = torch.tensor(raw, dtype=torch.long)
            return pixels, ids

        return Batched(kept, micro_batch_size, collate)

    def units(self, batch) -> int:
        return len(batch[1])

    def throughput_amount(self, batch) -> int:
        return len(batch[1])
