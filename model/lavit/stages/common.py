"""Loading the weights LaVIT's stages start from: the EVA-CLIP encoder and a stage-1a tokenizer; model sizes from
shapes alone (for the memory check before a stage builds its model)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.errors import InputError


def meta_parameter_counts(config, trainable: Callable, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of LaVIT `config` built on the meta device (no memory, a few seconds).

    `trainable(model)` returns the parameters the stage trains; parameters under `exclude` are not built by it."""
    from model.summary import build_meta_model

    model = build_meta_model(config)
    train_ids = {id(p) for p in trainable(model)}
    counts = [0, 0]
    for name, p in model.named_parameters():
        if not name.startswith(exclude):
            counts[id(p) not in train_ids] += p.numel()
    return counts[0], counts[1]


def load_encoder_weights(tokenizer, path: str) -> None:
    """EVA-CLIP ViT-g weights (the released eva_vitg_psz14.bin or any .bin/.safetensors with the same keys)."""
    if not path:
        return
    from model.lavit.official_tokenizer import _strip, read_state_dict

    state = _strip(read_state_dict(path), "encoder.")
    missing, unexpected = tokenizer.encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"encoder weights {path}: missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")


def load_tokenizer_checkpoint(tokenizer, path: str, prefix: str = "tokenizer.") -> None:
    """Stage-1a weights into `tokenizer`: a stage-1a checkpoint directory (keys `tokenizer.*`), its
    model.safetensors, or a released `visual_tokenizer/` folder. The EMA statistics are restarted."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() and ((p / "tokenizer_encoder.bin").exists() or (p / "visual_tokenizer").is_dir()):
        from model.lavit.official_tokenizer import load_official_visual_tokenizer

        loaded = load_official_visual_tokenizer(p, tokenizer.cfg)
        tokenizer.load_state_dict(loaded.state_dict())
        return
    file = p / "model.safetensors" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer weights at {path} (expected a stage-1a checkpoint directory, .safetensors, or a released visual_tokenizer/ folder)")
    state = load_file(str(file))
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if getattr(tokenizer, "token_predictor", None) is None:  # fixed-length ablation: the trained selector is unused
        state = {k: v for k, v in state.items() if not k.startswith("token_predictor.")}
    missing, unexpected = tokenizer.load_state_dict(state, strict=False)
    not_encoder = [k for k in missing if not k.startswith("encoder.")]
    if unexpected or not_encoder:
        raise InputError(f"tokenizer weights {file}: missing {not_encoder[:8]}, unexpected {unexpected[:8]} (written with another tokenizer config?)")
