"""Pixel decoder (paper §3.1 "Decoding to Pixels", Eq. 5; App. A): a conditional denoising U-Net in the latent
space of an AutoencoderKL, cross-attending to the tokenizer decoder's context `unet_proj(x_rec)` (B, N, C).

Training (Eq. 5): z = VAE(x) * scaling, eps ~ N(0, 1), t ~ U{0..T-1}, z_t = DDPM.add_noise(z, eps, t),
loss = ||eps - eps_theta(z_t, t, context)||^2. With probability `condition_dropout` the context of an image is
replaced by the unconditional one, so the same U-Net supports classifier-free guidance.

Sampling: DDIM with classifier-free guidance on the noise, eps = eps_u + g (eps_c - eps_u); unconditional and
conditional run as one batch. The unconditional context is what the release does: the `uncond_embeddings` rows
(SD's empty-prompt embedding, 77 x 768) written into a zero (B, N, C) context, with an attention mask over those rows.

Everything is a diffusers module built from config values in code (so the tiny preset needs no files), or loaded
from a local Stable Diffusion 1.5 folder (`unet/`, `vae/`, `scheduler/`) with `from_stable_diffusion`.

`latent_space="pixels"` (mini world only): no autoencoder; the U-Net denoises the image itself in [-1, 1] (there is
no pretrained VAE to download at mini scale, and a random frozen one does not reconstruct images).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.lavit.configuration import PixelDecoderConfig


def scheduler_config(cfg: PixelDecoderConfig) -> dict:
    """The noise schedule shared by the training (DDPM) and sampling (DDIM) schedulers (SD-1.5 values)."""
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": cfg.beta_schedule,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def build_unet(cfg: PixelDecoderConfig, context_dim: int, vae_scale_factor: int):
    from diffusers import UNet2DConditionModel

    channels = 3 if cfg.latent_space == "pixels" else cfg.vae_latent_channels
    return UNet2DConditionModel(
        sample_size=cfg.image_size // vae_scale_factor,
        in_channels=channels,
        out_channels=channels,
        down_block_types=tuple(cfg.unet_down_block_types),
        up_block_types=tuple(cfg.unet_up_block_types),
        block_out_channels=tuple(cfg.unet_block_out_channels),
        layers_per_block=cfg.unet_layers_per_block,
        attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=cfg.unet_norm_num_groups,
        cross_attention_dim=context_dim,
    )


def build_vae(cfg: PixelDecoderConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_block_out_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.vae_latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups,
        sample_size=cfg.image_size,
        scaling_factor=cfg.vae_scaling_factor,
    )


class PixelDecoder(nn.Module):
    """`unet` + `vae` + `uncond_embeddings` (the released `pixel_decoding/` folder)."""

    def __init__(
        self,
        cfg: PixelDecoderConfig,
        context_dim: int,
        unet: nn.Module | None = None,
        vae: nn.Module | None = None,
        uncond_embeddings: torch.Tensor | None = None,
    ):
        """Builds the U-Net and VAE from `cfg`, unless given (`from_stable_diffusion` passes loaded ones)."""
        super().__init__()
        self.cfg = cfg
        self.context_dim = context_dim
        if cfg.latent_space == "pixels":
            if vae is not None:
                raise ValueError("latent_space='pixels' has no autoencoder, but a VAE was given")
            self.vae, self.vae_scale_factor = None, 1
        else:
            self.vae = vae if vae is not None else build_vae(cfg)
            self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet = unet if unet is not None else build_unet(cfg, context_dim, self.vae_scale_factor)
        if self.unet.config.cross_attention_dim != context_dim:
            raise ValueError(
                f"unet cross_attention_dim={self.unet.config.cross_attention_dim}, the context is {context_dim}-d"
            )
        if self.vae is not None:
            self.vae.requires_grad_(False)  # SD recipe: the autoencoder is never trained with the U-Net
        # (1, L, C) released shape; zeros until loaded (a trained model loads SD's empty-prompt embedding).
        if uncond_embeddings is None:
            uncond_embeddings = torch.zeros(1, cfg.uncond_length, context_dim)
        self.uncond_embeddings = nn.Parameter(uncond_embeddings.float(), requires_grad=False)

    # -- schedulers are stateless config objects, rebuilt on demand (their state is the timestep list) -------------
    def training_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler_config(self.cfg))

    def sampling_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler_config(self.cfg))

    @property
    def device(self) -> torch.device:
        return self.uncond_embeddings.device

    # -- conditioning -------------------------------------------------------------------------------------------
    def unconditional_context(
        self, batch_size: int, num_tokens: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) zeros with the uncond rows in front, and the (B, N) bool mask of those rows (released)."""
        rows = self.uncond_embeddings[0].to(dtype)  # (l, c)
        length = min(rows.shape[0], num_tokens)
        context = torch.zeros(batch_size, num_tokens, rows.shape[-1], dtype=dtype, device=self.device)
        context[:, :length] = rows[:length]
        mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=self.device)
        mask[:, :length] = True
        return context, mask

    def _check_context(self, context: torch.Tensor) -> None:
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be (B, N, {self.context_dim}), got {tuple(context.shape)}")

    # -- latents ------------------------------------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> scaled latents (B, c, H/f, W/f) (pixel space: the images)."""
        if self.vae is None:
            return images
        posterior = self.vae.encode(images).latent_dist
        return posterior.sample(generator=generator) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images (B, 3, H, W) in [0, 1]."""
        if self.vae is None:
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    # -- Eq. 5 --------------------------------------------------------------------------------------------------
    def loss(
        self,
        images: torch.Tensor,
        context: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Epsilon-prediction loss. images (B, 3, H, W) in [-1, 1]; context (B, N, C) = tokenizer.decoder_context."""
        self._check_context(context)
        b = images.shape[0]
        with torch.no_grad():
            latents = self.encode_latents(images, generator)  # (b, c, h, w)
        scheduler = self.training_scheduler()
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        if self.training and self.cfg.condition_dropout > 0:
            drop = torch.rand(b, generator=generator, device=context.device) < self.cfg.condition_dropout  # (b,)
            uncond, uncond_mask = self.unconditional_context(b, context.shape[1], context.dtype)
            context = torch.where(drop[:, None, None], uncond, context)
            mask = torch.where(drop[:, None], uncond_mask, mask)
        predicted = self.unet(noisy, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        return F.mse_loss(predicted.float(), noise.float())

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image_size: int | None = None,
    ) -> torch.Tensor:
        """DDIM with CFG on the noise: context (B, N, C) -> images (B, 3, S, S) in [0, 1]. DDIM (eta 0) is
        deterministic after the initial noise, drawn from `generator` (or one generator per image)."""
        self._check_context(context)
        steps = num_inference_steps or self.cfg.num_inference_steps
        g = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        size = image_size or self.cfg.image_size
        if size % self.vae_scale_factor:
            raise ValueError(f"image_size {size} is not a multiple of the VAE factor {self.vae_scale_factor}")
        b, n, _ = context.shape
        scheduler = self.sampling_scheduler()
        scheduler.set_timesteps(steps, device=context.device)
        shape = (b, self.unet.config.in_channels, size // self.vae_scale_factor, size // self.vae_scale_factor)
        if isinstance(generator, (list, tuple)):
            if len(generator) != b:
                raise ValueError(f"{len(generator)} generators for {b} images")
            latents = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator])
            latents = latents.to(device=context.device, dtype=context.dtype)
        else:
            latents = torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)
        latents = latents * scheduler.init_noise_sigma
        uncond, uncond_mask = self.unconditional_context(b, n, context.dtype)
        both_context = torch.cat([uncond, context])  # (2b, n, c): one U-Net call per step
        both_mask = torch.cat([uncond_mask, torch.ones(b, n, dtype=torch.bool, device=context.device)])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)  # (2b, c, h, w)
            eps = self.unet(model_input, t, encoder_hidden_states=both_context, encoder_attention_mask=both_mask).sample
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + g * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return self.decode_latents(latents)

    # -- Stable Diffusion initialisation ------------------------------------------------------------------------
    @classmethod
    def from_stable_diffusion(cls, cfg: PixelDecoderConfig, path: str | Path, context_dim: int = 768) -> "PixelDecoder":
        """Initialise from a local SD-1.5 folder (paper §3.3). Needs `unet/` and `vae/`; `scheduler/` is checked
        against the config's noise schedule. The unconditional rows stay zero unless `uncond_embeddings.bin` is
        in the folder (SD does not ship one; a released LaVIT checkpoint has it in pixel_decoding/)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        root = Path(path)
        for sub in ("unet", "vae"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"Stable Diffusion folder {root} has no {sub}/ subfolder")
        sched = root / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            import json

            found = json.loads(sched.read_text())
            expected = scheduler_config(cfg)
            keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
            diffs = {k: (found[k], expected[k]) for k in keys if k in found and found[k] != expected[k]}
            if diffs:
                raise ValueError(f"{sched} disagrees with pixel_decoder config (found, expected): {diffs}")
        uncond = None
        if (root / "uncond_embeddings.bin").is_file():
            uncond = torch.load(root / "uncond_embeddings.bin", map_location="cpu", weights_only=True)
        return cls(
            cfg,
            context_dim,
            unet=UNet2DConditionModel.from_pretrained(root / "unet"),
            vae=AutoencoderKL.from_pretrained(root / "vae"),
            uncond_embeddings=uncond,
        )


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> PIL images."""
    from PIL import Image

    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]
