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


def read_encoder_weights(path: str) -> tuple[dict, str]:
    """The ViT weights at `path`, keyed as the tokenizer's `encoder` state dict, and the file they came from.

    Accepted: the released EVA-CLIP file (eva_vitg_psz14.bin, bare keys) or any .bin/.safetensors with the same keys
    (optionally all under `encoder.`); an `encoder_pretrain` run directory (its latest checkpoint), one of its
    checkpoint directories or their model.safetensors (the `encoder.*` keys are taken, `text_encoder.*` and
    `logit_scale` left); a stage-1a checkpoint whose encoder was saved (`tokenizer.encoder.*`)."""
    from train.stages.common import read_weights

    try:
        state, file = read_weights(path)  # a run: its newest checkpoint that verifies; either checkpoint layout
    except FileNotFoundError as err:
        raise FileNotFoundError(f"encoder_path {path}: {err} (expected an encoder_pretrain run or a weights file)") from None
    for prefix in ("tokenizer.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(file)
    return state, str(file)


def load_encoder_weights(tokenizer, path: str) -> None:
    """Pretrained ViT weights into `tokenizer.encoder`, strictly (`read_encoder_weights` lists the layouts)."""
    if not path:
        return
    from model.weights import check_state_dict

    state, file = read_encoder_weights(path)
    expected = {k: v.shape for k, v in tokenizer.encoder.state_dict().items()}
    check_state_dict(file, state, expected, what="the tokenizer's encoder")
    tokenizer.encoder.load_state_dict(state)


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
    from train.checkpoint import MANIFEST, read_checkpoint_weights

    if p.is_dir() and (p / MANIFEST).is_file():  # a checkpoint directory, either layout
        state, file = read_checkpoint_weights(p)
    else:
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
    if len(missing) > len(not_encoder):
        # Stage 1a leaves a ViT it loaded from `encoder_path` out of its checkpoints: reload it from there.
        recorded = _recorded_encoder_path(file)
        if recorded:
            load_encoder_weights(tokenizer, recorded)


def _recorded_encoder_path(file: Path) -> str:
    """`encoder_path` of the stage-1a run RUN/checkpoints/step_*/model.safetensors belongs to ("" if none)."""
    import yaml

    config = file.parent.parent.parent / "config.yaml"
    if file.parent.parent.name != "checkpoints" or not config.is_file():
        return ""
    return str((yaml.safe_load(config.read_text()) or {}).get("encoder_path") or "")


def refuse_released_stand_in(stage: str, flag: bool, downstream: str) -> None:
    """The `paper` presets of the mini-world pre-training stages stand for released weights: stop at once."""
    if flag:
        raise InputError(
            f"{stage}: this preset stands for released weights the paper does not train; pass them to {downstream} "
            f"instead (or --set released_stand_in=false to pre-train from scratch)"
        )
