"""Stage 1b: train the conditional denoising U-Net on the tokenizer's reconstructions (paper §3.1 "Decoding to
Pixels", Eq. 5; §3.3: initialised from Stable Diffusion 1.5, fine-tuned 20k steps).

    context = unet_proj(x_rec(codes(image)))          frozen tokenizer (encoder, selector, merger, quantizer, decoder)
    L       = E_{z, eps, t} || eps - eps_theta(z_t, t, context) ||^2     z = VAE latent of the image (VAE frozen)

The U-Net trains, and with it the tokenizer's `unet_proj`, the map from x_rec to the U-Net's context width: no
stage-1a loss reads it, so it leaves stage 1a at its random initialisation; the release ships it in the tokenizer's
file, so it can only have learned with the U-Net. Kept frozen (as this stage did before 2026-12-07) it shrank the mini
tokenizer's x_rec (mean |x| 0.035) to a context of mean |c| 0.004, and the U-Net learned to ignore it: on the mini
chain's test images its loss was the same with the image's own context, another image's and the unconditional one
(0.0321 / 0.0321 / 0.0321 at t = 100), so every rendered image was unconditional. The stage checkpoints hold the U-Net
and `tokenizer.decoder.unet_proj.*`; `model.lavit.checkpoints.attach_pixel_decoder` puts the latter into the
tokenizer it renders with. Conditioning dropout (`pixel_decoder.condition_dropout`) trains the unconditional branch used
by classifier-free guidance at sampling time. The diffusion noise and timesteps come from each rank's own RNG
stream, which is checkpointed, so a resumed run draws the same noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.lavit.checkpoints import UNET_PROJ_PREFIX, load_tokenizer_checkpoint
from train.data import Batched, ImageTextShards, Mapped
from train.distributed import DistInfo
from train.lavit.common import meta_parameter_counts
from train.lavit.config import PixelDecoderStageConfig
from train.stages.common import RANDOM_INIT, latest_checkpoint_dir, require_path, require_shards, require_upstream, synthetic_image_shards
from train.trainer import StatelessStage, StepOutput


def to_unit_range(image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) in [-1, 1] (the VAE's input range), bicubic resize without crop."""
    from PIL import Image

    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


class PixelDecoderTrainModule(nn.Module):
    def __init__(self, tokenizer: nn.Module, pixel_decoder: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.pixel_decoder = pixel_decoder

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        device = self.pixel_decoder.device
        with torch.no_grad():
            # The released selection (Gumbel sampling; noise from this rank's checkpointed RNG stream).
            out = self.tokenizer.tokenize(batch["tokenizer_pixels"].to(device), selection="sampled")
            reconstruction = self.tokenizer.decode(out.codes)  # x_rec (b, N, D) of the frozen tokenizer
        context = self.tokenizer.decoder.unet_proj(reconstruction)  # (b, N, C): trains with the U-Net
        images = batch["images"].to(device)  # (b, 3, H, W) in [-1, 1]
        loss = self.pixel_decoder.loss(images, context)  # mean over the batch
        b = images.shape[0]
        return StepOutput(loss_sum=loss * b, metric_sums={"kept_tokens": float(sum(c.numel() for c in out.codes))})


class PixelDecoderTask(StatelessStage):
    unit = "img"

    def __init__(self, cfg: PixelDecoderStageConfig, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.module: PixelDecoderTrainModule | None = None
        if not cfg.model.pixel_decoder.enabled:
            raise ValueError("stage 1b trains the pixel decoder, but model.pixel_decoder.enabled is false")

    def check_inputs(self) -> None:
        cfg = self.cfg
        require_upstream(cfg.tokenizer_checkpoint, "tokenizer_checkpoint", "pixel_decoder", "tokenizer")
        require_path(cfg.stable_diffusion_path, "stable_diffusion_path", "a local Stable Diffusion 1.5 folder with unet/ and vae/")
        require_shards(cfg.data.shards, "data.shards", cfg.synthetic.enabled)

    def parameter_counts(self) -> tuple[int, int]:
        # The whole LaVIT config on the meta device; this stage trains only the U-Net (the LLM is not built here).
        model = self.cfg.model
        return meta_parameter_counts(
            model,
            lambda lavit: [*lavit.pixel_decoder.unet.parameters(), *lavit.visual_tokenizer.decoder.unet_proj.parameters()],
            exclude=("language_model.",),
        )

    def build_model(self, info: DistInfo) -> nn.Module:
        from model.lavit.pixel_decoder import PixelDecoder
        from model.lavit.tokenizer import build_tokenizer

        cfg = self.cfg
        tokenizer = build_tokenizer(cfg.model.tokenizer)
        if cfg.tokenizer_checkpoint != RANDOM_INIT:  # checked in check_inputs; random-init is the explicit opt-in
            load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(cfg.tokenizer_checkpoint))
        tokenizer.requires_grad_(False).eval()
        tokenizer.decoder.unet_proj.requires_grad_(True)  # x_rec -> context: trains here (module docstring)
        context_dim = cfg.model.tokenizer.unet_context_dim
        if cfg.stable_diffusion_path:
            decoder = PixelDecoder.from_stable_diffusion(cfg.model.pixel_decoder, cfg.stable_diffusion_path, context_dim=context_dim)
        else:
            decoder = PixelDecoder(cfg.model.pixel_decoder, context_dim=context_dim)
        decoder.requires_grad_(False)
        decoder.unet.requires_grad_(True)  # only the U-Net learns (VAE and unconditional rows stay as loaded)
        if decoder.vae is not None:  # none in pixel space
            decoder.vae.eval()
        self.module = PixelDecoderTrainModule(tokenizer, decoder)
        return self.module

    def block_types(self) -> tuple[type, ...]:
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.resnet import ResnetBlock2D

        return (BasicTransformerBlock, ResnetBlock2D)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        # "context": unet_proj, which can take its own peak LR (`optim.group_lr`): it starts from stage 1a's random
        # initialisation, the U-Net from a pretrained one at paper scale.
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        context = [(n, p) for n, p in trained if n.startswith(UNET_PROJ_PREFIX)]
        return {"unet": [(n, p) for n, p in trained if not n.startswith(UNET_PROJ_PREFIX)], "context": context}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        # Frozen and rebuilt from tokenizer_checkpoint / stable_diffusion_path: every tokenizer key but unet_proj's
        # (read off the tokenizer of this config built on the meta device: no memory, any size), and the VAE.
        from model.lavit.tokenizer import build_tokenizer

        with torch.device("meta"):
            keys = build_tokenizer(self.cfg.model.tokenizer).state_dict()
        # unet_proj (UNET_PROJ_PREFIX), the one tokenizer part stage 1b trains (module docstring), is kept
        return (*(f"tokenizer.{k}" for k in keys if not f"tokenizer.{k}".startswith(UNET_PROJ_PREFIX)), "pixel_decoder.vae.")

    def build_data(self, info: DistInfo, micro_batch_size: int):
        shards = self.cfg.data.shards
        if self.cfg.synthetic.enabled:
            shards = synthetic_image_shards(self.cfg.synthetic, self.output_dir, info)
        if not shards:
            raise ValueError("stage 1b needs image shards: set data.shards (glob patterns of tar shards) or synthetic.enabled=true")
        tokenizer = self.module.tokenizer
        size = self.cfg.model.pixel_decoder.image_size
        stream = ImageTextShards(
            shards, seed=self.cfg.loop.seed, rank=info.rank, world_size=info.world_size, partition=self.cfg.data.partition, require_text=False
        )
        pairs = Mapped(stream, lambda s: (tokenizer.preprocess([s.image])[0].cpu(), to_unit_range(s.image, size)))
        return Batched(pairs, micro_batch_size, lambda items: {
            "tokenizer_pixels": torch.stack([a for a, _ in items]),  # (b, 3, S_tok, S_tok), CLIP-normalised
            "images": torch.stack([b for _, b in items]),  # (b, 3, H, W) in [-1, 1]
        })

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["images"].shape[0])

    def throughput_amount(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["images"].shape[0])
