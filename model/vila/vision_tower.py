"""The vision tower: transformers' `CLIPVisionModel`, read at its second-to-last layer with CLS dropped (paper §2).

`VisionTower.clip` is the plain CLIPVisionModel. The pinned transformers (5.x) keeps its modules at the top level
(`embeddings.*`, `encoder.layers.*`); released files carry them under `vision_model.*`, which the loaders strip.
The whole tower is built (the last block and post-layernorm included, unused by VILA) so that released weights
load strictly; the tower is always frozen in VILA's recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from model.vila.configuration import VisionConfig

if TYPE_CHECKING:
    from PIL import Image


def clip_vision_config(config: VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        num_channels=3,
    )


def preprocess_images(images: list[Image.Image], config: VisionConfig) -> torch.Tensor:
    """RGB PIL images -> (n, 3, S, S) float32: resized to the tower's square side (bicubic), CLIP-normalised.

    Not in the paper: the released code pads to a square first (`image_aspect_ratio="pad"`); the mini world's
    images are square, and a plain resize keeps the test inputs exact."""
    import numpy as np

    side = config.image_size
    mean = torch.tensor(config.image_mean).view(3, 1, 1)
    std = torch.tensor(config.image_std).view(3, 1, 1)
    out = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (side, side):
            from PIL import Image as PILImage

            image = image.resize((side, side), PILImage.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((pixels - mean) / std)
    if not out:
        return torch.zeros(0, 3, side, side)
    return torch.stack(out)


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.clip = CLIPVisionModel(clip_vision_config(config))

    @property
    def num_tokens(self) -> int:
        return self.config.grid**2 + (1 if self.config.select_feature == "cls_patch" else 0)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return preprocess_images(images, self.config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, tokens, hidden_size): hidden state `select_layer` (CLS dropped for "patch")."""
        side = self.config.image_size
        if pixels.dim() != 4 or pixels.shape[1:] != (3, side, side):
            raise ValueError(f"images of shape {tuple(pixels.shape)}; the vision tower takes (n, 3, {side}, {side})")
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        out = self.clip(pixel_values=pixels.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.config.select_layer]
        if self.config.select_feature == "patch":
            features = features[:, 1:]
        return features
