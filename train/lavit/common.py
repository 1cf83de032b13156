"""What LaVIT's stages share: model sizes from shapes alone (for the memory check before a stage builds its model), and
the stand-in stages' refusal of their `paper` presets. The weights a stage starts from (the EVA-CLIP encoder, a
stage-1a tokenizer) are read by `model/lavit/checkpoints.py`, as the evaluation loader reads them."""

from __future__ import annotations

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


def refuse_released_stand_in(stage: str, flag: bool, downstream: str) -> None:
    """The `paper` presets of the mini-world pre-training stages stand for released weights: stop at once."""
    if flag:
        raise InputError(
            f"{stage}: this preset stands for released weights the paper does not train; pass them to {downstream} "
            f"instead (or --set released_stand_in=false to pre-train from scratch)"
        )
