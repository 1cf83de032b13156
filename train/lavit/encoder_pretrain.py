"""Mini-world stand-in for EVA-CLIP: contrastive pre-training of the tokenizer's ViT on image-caption pairs.

The paper's tokenizer reads a *frozen, pretrained* EVA-CLIP ViT-g. A mini world has no such encoder, so this stage
trains the same class (`EvaVisionTransformer`, shapes from the stage's `tokenizer` config) CLIP-style:

    v_i = l2( head( norm( mean_p ViT(image_i)[:, 1:][p] ) ) )      image: mean over the patch features the
                                                                   tokenizer reads (last block, before norm, no
                                                                   CLS), then the ViT's own `norm` and CLIP `head`
    t_j = l2( proj( masked_mean( TextEncoder(bytes_j) ) ) )        caption: byte ids -> embedding + positions ->
                                                                   `depth` pre-norm transformer layers -> LN
    logits_ij = exp(s) v_i . t_j,   s learned, exp(s) <= max_logit_scale,  exp(s_0) = 1 / init_temperature
    loss_i = (CE(logits_i., P_i. / |P_i.|) + CE(logits_.i, P_.i / |P_.i|)) / 2     symmetric InfoNCE with soft targets

P is the positive-pair matrix. Plain CLIP: P = I, every other pair of the micro-batch is a negative. With
`data.positive_keys` (e.g. ["shape", "color"]) two pairs whose KEY.json agree on those keys are positives of each
other, the target spread evenly over them: UniCL's label-aware contrastive loss (Yang et al., CVPR 2022). A
world of 24 image contents and batches of 64 needs it: with P = I most in-batch "negatives" show the same thing as
the positive, the loss cannot be satisfied and pulls against itself (measured: the plain-CLIP stand-in learns
colour, never shape; reproduce/mini_release.py).

The negatives are the other pairs of the same micro-batch (not gathered over ranks or accumulation steps: keep
micro_batch_size = global_batch_size / world_size for the usual CLIP batch). Logged: loss, i2t_acc (in-batch
image -> text top-1; a retrieved caption identical to the true one counts as correct), t2i_acc, logit_scale.

Checkpoint keys: `encoder.*` (exactly the tokenizer's `encoder` state dict, so stage 1a loads it with
`encoder_path=<this run>`), `text_encoder.*`, `logit_scale`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import InputError
from train.data import Batched, ImageTextShards, Mapped
from train.distributed import DistInfo
from train.lavit.common import refuse_released_stand_in
from train.lavit.config import EncoderPretrainStageConfig, TextEncoderConfig
from train.stages.common import require_shards, synthetic_image_shards
from train.trainer import StatelessStage, StepOutput

BYTE_VOCAB = 259  # build_byte_text_tokenizer: <unk>, <s>, </s>, then 256 bytes
PAD_ID = 0  # padding positions are masked out; the id itself is never read


class TextEncoder(nn.Module):
    """Byte ids -> one caption vector: embedding + learned positions, pre-norm transformer layers, final LayerNorm,
    mean over real (unpadded) positions, linear projection into the joint space."""

    def __init__(self, cfg: TextEncoderConfig, embed_dim: int):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"text_encoder.width={cfg.width} is not divisible by text_encoder.heads={cfg.heads}")
        self.embed = nn.Embedding(BYTE_VOCAB, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.width, cfg.heads, cfg.mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (b, T) -> (b, embed_dim), not normalised."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (b, T, w)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.proj((x * m).sum(1) / m.sum(1).clamp(min=1.0))


@torch.no_grad()
def init_encoder(encoder: nn.Module, std: float) -> None:
    """The initialisation the tokenizer gives a freshly built ViT (`DynamicVisualTokenizer._init_weights`)."""
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(encoder.cls_token, std=std)
    nn.init.trunc_normal_(encoder.pos_embed, std=std)
    for block in encoder.blocks:
        nn.init.zeros_(block.attn.q_bias)
        nn.init.zeros_(block.attn.v_bias)


class ContrastiveModule(nn.Module):
    """ViT + caption encoder + learned temperature; forward(batch) -> StepOutput with summed per-pair losses."""

    def __init__(self, cfg: EncoderPretrainStageConfig):
        super().__init__()
        from model.lavit.eva_vit import EvaVisionTransformer

        self.encoder = EvaVisionTransformer(cfg.tokenizer)
        init_encoder(self.encoder, cfg.tokenizer.init_std)
        self.text_encoder = TextEncoder(cfg.text_encoder, cfg.tokenizer.encoder_head_dim)
        nn.init.normal_(self.text_encoder.pos, std=0.01)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.max_log_scale = math.log(cfg.max_logit_scale)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.encoder(pixel_values)[:, 1:]  # (b, N, D): what the tokenizer reads
        return self.encoder.head(self.encoder.norm(features.mean(1)))  # (b, E)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        device = self.logit_scale.device
        pixels, ids, mask = (batch[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask"))
        same = batch["same_caption"].to(device)  # (b, b) bool: caption i == caption j
        positive = batch["positive"].to(device).float()  # (b, b): pair j is a positive of pair i (diagonal always)
        image = F.normalize(self.embed_images(pixels).float(), dim=-1)  # (b, E)
        text = F.normalize(self.text_encoder(ids, mask).float(), dim=-1)  # (b, E)
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * image @ text.T  # (b, b): image i vs caption j
        target = torch.arange(logits.shape[0], device=device)
        soft = positive / positive.sum(1, keepdim=True)  # symmetric: rows and columns are the same sets
        per_pair = (F.cross_entropy(logits, soft, reduction="none") + F.cross_entropy(logits.T, soft, reduction="none")) / 2
        with torch.no_grad():
            i2t = same[target, logits.argmax(1)].float().sum()
            t2i = same[logits.argmax(0), target].float().sum()
        return StepOutput(
            loss_sum=per_pair.sum(),
            metric_sums={"i2t_acc": i2t, "t2i_acc": t2i},
            metric_values={"logit_scale": float(scale.detach())},
        )


def preprocess_image(image: Any, size: int) -> torch.Tensor:
    """PIL image -> (3, S, S): the tokenizer's preprocessing (RGB, bicubic resize without crop, CLIP mean/std)."""
    from PIL import Image

    from model.lavit.tokenizer import CLIP_MEAN, CLIP_STD

    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def collate(pairs: list[tuple[torch.Tensor, list[int], tuple]]) -> dict[str, torch.Tensor]:
    """[(pixels, caption ids, positive key)] -> pixel_values (b, 3, S, S), input_ids / attention_mask (b, T),
    same_caption (b, b), positive (b, b): equal positive keys (an empty key: only the pair itself)."""
    width = max(len(ids) for _, ids, _ in pairs)
    ids = torch.full((len(pairs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(pairs), width, dtype=torch.bool)
    for i, (_, caption, _) in enumerate(pairs):
        ids[i, : len(caption)] = torch.tensor(caption)
        mask[i, : len(caption)] = True
    keys = [tuple(c) for _, c, _ in pairs]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    labels = [(i,) if not key else key for i, (_, _, key) in enumerate(pairs)]
    positive = torch.tensor([[a == b for b in labels] for a in labels])
    return {"pixel_values": torch.stack([p for p, _, _ in pairs]), "input_ids": ids, "attention_mask": mask,
            "same_caption": same, "positive": positive}


class EncoderPretrainTask(StatelessStage):
    unit = "img"

    def __init__(self, cfg: EncoderPretrainStageConfig, output_dir: Path):
        refuse_released_stand_in("encoder_pretrain", cfg.released_stand_in, "stage 1a as encoder_path=<EVA-CLIP ViT-g weights>")
        if cfg.tokenizer.encoder != "eva_vit_g":
            raise ValueError(
                f"encoder_pretrain trains the EVA ViT (tokenizer.encoder='eva_vit_g'), got tokenizer.encoder={cfg.tokenizer.encoder!r}"
            )
        if cfg.text_encoder.max_len < 1:
            raise ValueError(f"text_encoder.max_len must be >= 1, got {cfg.text_encoder.max_len}")
        self.cfg = cfg
        self.output_dir = Path(output_dir)

    # -- inputs (checked before anything is built) ---------------------------------------------------------------
    def check_inputs(self) -> None:
        cfg = self.cfg
        require_shards(cfg.data.shards, "data.shards", cfg.synthetic.enabled)
        if cfg.loop.micro_batch_size < 2:
            raise InputError(f"contrastive training needs at least 2 pairs per micro-batch, got loop.micro_batch_size={cfg.loop.micro_batch_size}")

    def parameter_counts(self) -> tuple[int, int]:
        with torch.device("meta"):  # shapes only: every parameter trains
            model = ContrastiveModule(self.cfg)
        return sum(p.numel() for p in model.parameters()), 0

    def build_model(self, info: DistInfo) -> nn.Module:
        return ContrastiveModule(self.cfg)

    def block_types(self) -> tuple[type, ...]:
        from model.lavit.eva_vit import EvaBlock

        return (EvaBlock, nn.TransformerEncoderLayer)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"visual": [(n, p) for n, p in model.named_parameters() if p.requires_grad]}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        return ()

    def build_data(self, info: DistInfo, micro_batch_size: int):
        from model.lavit.vocabulary import build_byte_text_tokenizer

        cfg = self.cfg
        shards = cfg.data.shards  # given shards win over the synthetic ones (mini preset + --set data.shards=[...])
        if not shards and cfg.synthetic.enabled:
            shards = synthetic_image_shards(cfg.synthetic, self.output_dir, info)
        if not shards:
            raise ValueError("encoder_pretrain needs image-text shards: set data.shards (glob patterns of tar shards) or synthetic.enabled=true")
        if micro_batch_size < 2:
            raise ValueError(f"contrastive training needs at least 2 pairs per micro-batch, got loop.micro_batch_size={micro_batch_size}")
        tok = build_byte_text_tokenizer(model_max_length=1 << 30)
        size, max_len = cfg.tokenizer.image_size, cfg.text_encoder.max_len
        stream = ImageTextShards(shards, seed=cfg.loop.seed, rank=info.rank, world_size=info.world_size, partition=cfg.data.partition)

        wanted = dict(cfg.data.meta_filter)
        positive_keys = tuple(cfg.data.positive_keys)

        def to_pair(sample):
            if any(str(sample.meta.get(k)) != v for k, v in wanted.items()):
                return None
            missing = [k for k in positive_keys if k not in sample.meta]
            if missing:
                raise InputError(f"data.positive_keys: sample {sample.key} has no {missing[0]!r} in its KEY.json")
            ids = tok(sample.text, add_special_tokens=False)["input_ids"][:max_len]
            key = tuple(str(sample.meta[k]) for k in positive_keys)
            return (preprocess_image(sample.image, size), ids, key) if ids else None

        return Batched(Mapped(stream, to_pair), micro_batch_size, collate)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])

    def throughput_amount(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])
