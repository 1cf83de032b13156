"""The vision tower: transformers' `CLIPVisionModel` (VILA 1.0, the paper) or `SiglipVisionModel` (VILA 1.5), read
at its second-to-last layer (paper §2), and the image preprocessing of the released code.

`VisionTower.clip` is the plain tower model, whichever it is (the attribute keeps its name so that checkpoint keys
stay `vision_tower.clip.*` for both). The pinned transformers (5.x) keeps its modules at the top level
(`embeddings.*`, `encoder.layers.*`); released files carry them under `vision_model.*`, which the loaders strip.
The whole tower is built (the last block, post-layernorm and SigLIP's pooling head included, unused by VILA) so
that released weights load strictly; the tower is always frozen in VILA's recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from model.vila.configuration import VisionConfig

if TYPE_CHECKING:
    from PIL import Image


def clip_vision_config(config: VisionConfig) -> CLIPVisionConfig | SiglipVisionConfig:
    """The transformers config of the tower (CLIPVisionConfig, or SiglipVisionConfig for tower="siglip")."""
    common = dict(
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
    if config.tower == "siglip":
        return SiglipVisionConfig(vision_use_head=config.use_head, **common)
    return CLIPVisionConfig(**common)


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """The released `expand2square` (llava/mm_utils.py): the image centred on a square of `background`, the
    shorter side padded (offset rounded down)."""
    from PIL import Image as PILImage

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = PILImage.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _tower_processor(config: VisionConfig):
    """The tower's own image processor, as the release loads it from the tower folder: CLIP resizes the shortest
    side to image_size and centre-crops it; SigLIP resizes to the square. Both bicubic, then /255 and mean/std."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    side = config.image_size
    if config.tower == "siglip":
        return SiglipImageProcessor(size={"height": side, "width": side}, image_mean=list(config.image_mean),
                                    image_std=list(config.image_std))  # fmt: skip
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                              image_mean=list(config.image_mean), image_std=list(config.image_std))  # fmt: skip


def preprocess_images(images: list[Image.Image], config: VisionConfig) -> torch.Tensor:
    """RGB PIL images -> (n, 3, S, S) float32, as `config.image_aspect_ratio` says (see VisionConfig):

        "resize"  stretched to S x S (bicubic), /255, mean/std. The release's "resize" (llava/mm_utils.py
                  process_image: `image.resize(...)`, then the processor, which leaves an S x S image as it is)
        "pad"     expand2square with the mean colour x 255 (int), then the tower's processor (VILA 1.0)
        ""        the tower's processor on the image as it is (CLIP: shortest side to S, centre crop)"""
    import numpy as np
    from PIL import Image as PILImage

    side = config.image_size
    images = [image.convert("RGB") for image in images]
    if not images:
        return torch.zeros(0, 3, side, side)
    if config.image_aspect_ratio == "pad":
        background = tuple(int(x * 255) for x in config.image_mean)
        images = [expand2square(image, background) for image in images]
    if config.image_aspect_ratio in ("pad", ""):
        pixels = _tower_processor(config)(images, return_tensors="pt")["pixel_values"]
        return pixels.to(torch.float32)
    mean = torch.tensor(config.image_mean).view(3, 1, 1)
    std = torch.tensor(config.image_std).view(3, 1, 1)
    out = []
    for image in images:
        if image.size != (side, side):
            image = image.resize((side, side), PILImage.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((pixels - mean) / std)
    return torch.stack(out)


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        model = SiglipVisionModel if config.tower == "siglip" else CLIPVisionModel
        self.clip = model(clip_vision_config(config))

    @property
    def num_tokens(self) -> int:
        return self.config.tokens

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return preprocess_images(images, self.config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, tokens, hidden_size): hidden state `select_layer`, its first token dropped for
        "patch" (the release's `feature_select`)."""
        side = self.config.image_size
        if pixels.dim() != 4 or pixels.shape[1:] != (3, side, side):
            raise ValueError(f"images of shape {tuple(pixels.shape)}; the vision tower takes (n, 3, {side}, {side})")
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        out = self.clip(pixel_values=pixels.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.config.select_layer]
        if self.config.select_feature == "patch":
            features = features[:, 1:]
        return features
