"""Projectors: vision features (n, L, C) -> LLM input embeddings (n, L', H) (paper §3.1 Table 1, §4.3 Table 7).

    linear          Linear(C, H)                                                   Table 1 (d)
    mlp2x_gelu      Linear(C, H) - GELU - Linear(H, H)                             the released training scripts
    transformer     pre-norm Transformer blocks at width C, then Linear(C, H)      Table 1 (a-c); sizes are ours
    downsample_2x2  2x2 neighbours -> one token (space-to-channel, 4C; odd sides zero-padded on the bottom/right;
                    the released `mlp_downsample` token order, `space_to_channel_2x2`),
                    then LayerNorm(4C) - Linear(4C, H) - GELU - Linear(H, H)       Table 7 (576 -> 144 tokens)

Every projector keeps its layers in `self.layers` (an nn.Sequential, or the single Linear of `linear`), so its state
dict names are those of the released `mm_projector` (`layers.0.weight`, ...; `layers.weight` for linear).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.vila.configuration import ProjectorConfig, VisionConfig


def space_to_channel_2x2(x: torch.Tensor) -> torch.Tensor:
    """(n, s*s, C) on an s x s row-major grid -> (n, ceil(s/2)^2, 4C).

    Cell (i, j) (rows 2i, 2i+1; columns 2j, 2j+1) concatenates the inputs at (2i, 2j), (2i, 2j+1), (2i+1, 2j),
    (2i+1, 2j+1), in that order; an odd side is first padded with one row/column of zeros at the bottom/right.
    The cells come out column by column (index j * ceil(s/2) + i), the transposed grid: the released
    `DownSampleBlock.flat_square` (VILA 1.5 llava/model/multimodal_projector/base_projector.py) pairs columns, then
    swaps the two spatial axes before pairing rows, and the LLM sees its tokens in that order."""
    n, length, c = x.shape
    s = math.isqrt(length)
    if s * s != length:
        raise ValueError(f"the 2x2 downsample needs a square grid of tokens; got {length} tokens")
    grid = x.view(n, s, s, c)
    if s % 2:
        grid = nn.functional.pad(grid, (0, 0, 0, 1, 0, 1))  # (C: none, width: +1 right, height: +1 bottom)
        s += 1
    half = s // 2
    grid = grid.view(n, half, 2, half, 2, c).permute(0, 3, 1, 2, 4, 5)  # (n, j, i, di, dj, C): column-major cells
    return grid.reshape(n, half * half, 4 * c)


class DownSample2x2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_channel_2x2(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + GELU MLP block (the Transformer-block projector's unit)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Projector(nn.Module):
    def __init__(self, config: ProjectorConfig, vision: VisionConfig, llm_hidden: int):
        super().__init__()
        self.type = config.type
        c, h = vision.hidden_size, llm_hidden
        if config.type == "linear":
            self.layers: nn.Module = nn.Linear(c, h)
        elif config.type == "mlp2x_gelu":
            self.layers = nn.Sequential(nn.Linear(c, h), nn.GELU(), nn.Linear(h, h))
        elif config.type == "transformer":
            blocks = [
                TransformerBlock(c, config.transformer_heads, config.transformer_mlp_ratio)
                for _ in range(config.transformer_layers)
            ]
            self.layers = nn.Sequential(*blocks, nn.LayerNorm(c), nn.Linear(c, h))
        elif config.type == "downsample_2x2":
            self.layers = nn.Sequential(DownSample2x2(), nn.LayerNorm(4 * c), nn.Linear(4 * c, h), nn.GELU(), nn.Linear(h, h))
        else:
            raise ValueError(f"unknown projector.type {config.type!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
