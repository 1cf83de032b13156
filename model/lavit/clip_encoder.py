"""CLIP ViT-L/14 patch encoder (the paper's ablation encoder, §4.3) through transformers' ``CLIPVisionModel``.

Returns the same thing as the EVA encoder: the last encoder layer's hidden states for [CLS] + N patches, before
any final norm (``CLIPVisionModel``'s ``post_layernorm`` only touches the pooled output). Weights come from a local
folder (``config.json`` + weights, as written by ``save_pretrained``); nothing is downloaded. Without a folder the
model is built at random from the tokenizer config (tests build a tiny one this way).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.lavit.tokenizer_config import VisualTokenizerConfig


def _clip_vision_config(cfg: VisualTokenizerConfig):
    from transformers import CLIPVisionConfig

    if cfg.encoder_path:
        path = Path(cfg.encoder_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIP encoder folder {path} has no config.json; expected a local CLIPVisionModel/CLIPModel folder "
                "(save_pretrained layout). Nothing is downloaded."
            )
        config = CLIPVisionConfig.from_pretrained(str(path), local_files_only=True)
        expected = {
            "hidden_size": cfg.encoder_width,
            "num_hidden_layers": cfg.encoder_depth,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
        }
        wrong = {k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v}
        if wrong:
            details = ", ".join(f"{k}: folder has {got}, config says {want}" for k, (got, want) in wrong.items())
            raise ValueError(f"CLIP encoder at {path} does not match the tokenizer config ({details})")
        return config
    return CLIPVisionConfig(
        hidden_size=cfg.encoder_width,
        intermediate_size=cfg.encoder_mlp,
        projection_dim=cfg.encoder_head_dim,
        num_hidden_layers=cfg.encoder_depth,
        num_attention_heads=cfg.encoder_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="quick_gelu",  # OpenAI CLIP's activation
        layer_norm_eps=cfg.encoder_ln_eps,
    )


class ClipPatchEncoder(nn.Module):
    """Wraps ``CLIPVisionModel``; ``forward`` returns (B, 1+N, D) last-layer hidden states."""

    def __init__(self, cfg: VisualTokenizerConfig):
        super().__init__()
        from transformers import CLIPVisionModel

        self.path = cfg.encoder_path
        self.vision = CLIPVisionModel(_clip_vision_config(cfg))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vision.parameters()).dtype
        return self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state  # (b, 1+N, D)

    def load_pretrained(self) -> None:
        """Load the weights from ``encoder_path`` (a local folder) into this encoder, strictly."""
        from transformers import CLIPVisionModel

        if not self.path:
            raise ValueError("encoder_path is empty: there is no local CLIP folder to load weights from")
        loaded = CLIPVisionModel.from_pretrained(self.path, local_files_only=True)
        self.vision.load_state_dict(loaded.state_dict(), strict=True)
