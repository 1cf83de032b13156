"""Stage 1a: train the dynamic visual tokenizer with Eq. 4 (paper §3.1, §3.3; Table 9 "Tokenizer training").

The ViT encoder is frozen; the selector, merger, quantizer (encode_task_layer) and decoder train on

    L = 1/N sum_i (1 - cos(x_i, x_rec_i))  +  lambda (rho - 1/N sum_i M_i)^2      (rho = 1/3, lambda = 2)

in the authors' two phases: for `vq_start_step` steps the decoder reads the continuous (L2-normalised) merged
features, without quantization; at `vq_start_step` the codebook is initialised by k-means on part features of
`kmeans_images` images (gathered from all ranks, so every rank computes the same codebook) and from then on the
decoder reads codebook entries, the codebook following its EMA update.

Logged per step: loss, recon_loss, ratio_loss, commitment_loss, keep_ratio (mean kept fraction), num_tokens (kept
tokens per image), codebook_perplexity and codebook_fraction_used (of the step's codes), vq (phase flag).

Data: images from tar shards (captions are not used). Parallelism: DDP. FSDP is refused: the EMA codebook is
written in the forward pass, which a sharded parameter does not support, and the trainable part (merger + decoder,
~0.6B at paper size) fits on one GPU with its optimizer state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.lavit.checkpoints import load_encoder_weights, load_tokenizer_checkpoint
from train.data import Batched, ImageTextShards, Mapped
from train.distributed import DistInfo
from train.lavit.config import TokenizerStageConfig
from train.stages.common import latest_checkpoint_dir, require_shards, require_weights, synthetic_image_shards
from train.trainer import StepOutput


class TokenizerTrainModule(nn.Module):
    """The tokenizer plus the phase switch; forward(pixel_values) -> StepOutput with summed per-image losses."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.quantize = False  # phase: set by the task from the step number

    def forward(self, pixel_values: torch.Tensor) -> StepOutput:
        device = next(self.tokenizer.decoder.parameters()).device
        pixel_values = pixel_values.to(device)
        b = pixel_values.shape[0]
        out = self.tokenizer.compute_loss(pixel_values, selection="sampled", quantize=self.quantize)
        # compute_loss averages over the batch; the trainer wants sums over images (it divides by the global count).
        return StepOutput(
            loss_sum=out.loss * b,
            metric_sums={
                "recon_loss": out.recon_loss.detach() * b,
                "ratio_loss": out.ratio_loss.detach() * b,
                "commitment_loss": out.commitment_loss.detach() * b,
                "keep_ratio": out.keep_ratio * b,
                "num_tokens": out.num_tokens * b,
            },
            metric_values={
                "codebook_perplexity": out.codebook_perplexity,
                "codebook_fraction_used": out.codebook_fraction_used,
            },
        )


class TokenizerTask:
    unit = "img"

    def __init__(self, cfg: TokenizerStageConfig, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.module: TokenizerTrainModule | None = None
        self.data = None
        self.info: DistInfo | None = None
        if cfg.dist.strategy == "fsdp":
            raise ValueError(
                "stage 1a (tokenizer) does not support dist.strategy=fsdp: the EMA codebook is updated in the forward "
                "pass, which sharded parameters do not allow. Use ddp (the trainable part fits one GPU)."
            )

    def check_inputs(self) -> None:
        cfg = self.cfg
        require_weights(cfg.encoder_path, "encoder_path", "EVA-CLIP weights or an encoder_pretrain run; \"\" = random init")
        require_weights(cfg.init_from, "init_from", "a tokenizer run, checkpoint directory or .safetensors")
        require_shards(cfg.data.shards, "data.shards", cfg.synthetic.enabled)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, frozen) from shapes on the meta device: the encoder is frozen, the rest trains."""
        from model.lavit.tokenizer import build_tokenizer

        with torch.device("meta"):
            tokenizer = build_tokenizer(self.cfg.tokenizer)
        frozen = {id(p) for p in tokenizer.encoder.parameters()}
        params = list(tokenizer.parameters())
        return sum(p.numel() for p in params if id(p) not in frozen), sum(p.numel() for p in params if id(p) in frozen)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, info: DistInfo) -> nn.Module:
        from model.lavit.tokenizer import build_tokenizer

        self.info = info
        tokenizer = build_tokenizer(self.cfg.tokenizer)
        load_encoder_weights(tokenizer, self.cfg.encoder_path)
        if self.cfg.init_from:
            load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(self.cfg.init_from))
        tokenizer.encoder.eval()  # frozen: no dropout / norm statistics drift
        self.module = TokenizerTrainModule(tokenizer)
        return self.module

    def block_types(self) -> tuple[type, ...]:
        from model.lavit.decoder import DecoderBlock
        from model.lavit.token_merger import MergerBlock

        return (MergerBlock, DecoderBlock)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"visual": [(n, p) for n, p in model.named_parameters() if p.requires_grad]}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        # A frozen ViT loaded from a file is rebuilt from that file; a randomly initialised one (mini runs) is
        # saved, so later stages that load this checkpoint see the encoder the tokenizer was trained with. The
        # codebook (frozen to the optimizer, trained by EMA) always stays in.
        from_file = bool(self.cfg.encoder_path or self.cfg.tokenizer.encoder_path)
        return ("tokenizer.encoder.",) if self.cfg.tokenizer.freeze_encoder and from_file else ()

    # -- data ---------------------------------------------------------------------------------------------------
    def build_data(self, info: DistInfo, micro_batch_size: int):
        shards = self.cfg.data.shards
        if self.cfg.synthetic.enabled:
            shards = synthetic_image_shards(self.cfg.synthetic, self.output_dir, info)
        if not shards:
            raise ValueError("stage 1a needs image shards: set data.shards (glob patterns of tar shards) or synthetic.enabled=true")
        tokenizer = self.module.tokenizer
        stream = ImageTextShards(
            shards, seed=self.cfg.loop.seed, rank=info.rank, world_size=info.world_size, partition=self.cfg.data.partition, require_text=False
        )
        pixels = Mapped(stream, lambda sample: tokenizer.preprocess([sample.image])[0].cpu())  # (3, S, S)
        self.data = Batched(pixels, micro_batch_size, torch.stack)  # (b, 3, S, S)
        return self.data

    def units(self, batch: torch.Tensor) -> int:
        return int(batch.shape[0])

    def throughput_amount(self, batch: torch.Tensor) -> int:
        return int(batch.shape[0])

    # -- phases -------------------------------------------------------------------------------------------------
    def on_step_start(self, step: int, model: nn.Module) -> dict[str, float]:
        quantize = step >= self.cfg.vq_start_step
        if quantize and step == self.cfg.vq_start_step:
            self._kmeans_init(model.tokenizer)
        model.quantize = quantize
        return {"vq": float(quantize)}

    @torch.no_grad()
    def _kmeans_init(self, tokenizer: nn.Module) -> None:
        """Codebook <- spherical k-means of encode_task_layer(part features) of `kmeans_images` images."""
        info = self.info
        per_rank = math.ceil(self.cfg.kmeans_images / info.world_size)
        vectors = []
        seen = 0
        while seen < per_rank:
            pixels = next(self.data).to(next(tokenizer.decoder.parameters()).device)
            out = tokenizer.tokenize(pixels, selection="sampled", quantize=False)  # the training distribution of M
            vectors.extend(z.float().cpu() for z in tokenizer.encode_for_quantizer(out.kept_features))
            seen += pixels.shape[0]
        local = torch.cat(vectors) if vectors else torch.zeros(0, self.cfg.tokenizer.code_dim)
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            local = torch.cat(gathered)
        generator = torch.Generator().manual_seed(self.cfg.loop.seed)
        quantizer = tokenizer.quantize
        quantizer.kmeans_init(local.to(quantizer.embedding.weight.device), iters=self.cfg.kmeans_iters, generator=generator)

    # -- state that is not in the module's state_dict: the quantizer's EMA statistics --------------------------------
    def state_dict(self) -> dict[str, Any]:
        ema = self.module.tokenizer.quantize._ema
        return {"ema": {k: v.detach().cpu().clone() for k, v in ema.items()} if ema is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        quantizer = self.module.tokenizer.quantize
        device = quantizer.embedding.weight.device
        quantizer._ema = {k: v.to(device) for k, v in state["ema"].items()} if state["ema"] else None
