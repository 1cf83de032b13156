"""Which LaVIT tensors stay float32 in a bf16/fp16 model, and how a model is put on a device and dtype.

`Module.to(torch.bfloat16)` casts every floating tensor, which is wrong for two of LaVIT's parts:

- the LLaMA rotary frequencies (`rotary_emb.inv_freq`, a buffer): rounded to bf16, the rotation angle
  position * inv_freq is off by up to ~0.4 rad below position 300 and ~2.5 rad below 2048;
- the token selector (`token_predictor`): the released code runs it in float32 whatever the model dtype, so the
  keep decisions do not depend on it. transformers' `_keep_in_fp32_modules` does not help: it acts only inside
  `from_pretrained`, and our loaders build on the meta device and assign weights themselves.

`place(model, device, dtype)` replaces `model.to(device, dtype)` for LaVIT models: tensors of a float32 module are
moved to the device without a dtype change (never rounded), the rest are cast. `tensor_dtype(model, key, dtype)` gives
the dtype a state-dict key must be loaded in, so the streaming loaders (`convert_state`, used by `official.py`,
`official_tokenizer.py` and `checkpoints.py`) put each tensor straight into its final dtype.
"""

from __future__ import annotations

import torch
from torch import nn


def keeps_float32(module: nn.Module) -> bool:
    """The selector and any rotary-embedding module (one holding an `inv_freq` buffer) compute in float32."""
    from model.lavit.token_selector import TokenSelector

    return isinstance(module, TokenSelector) or "inv_freq" in getattr(module, "_buffers", {})


def float32_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes ("a.b.") of the float32 modules of `model`."""
    return tuple(f"{name}." if name else "" for name, m in model.named_modules() if keeps_float32(m))


def tensor_dtype(dtype: torch.dtype, key: str, prefixes: tuple[str, ...], tensor: torch.Tensor) -> torch.dtype:
    """The dtype tensor `key` is kept in: its own when not floating point, float32 under a float32 module, else `dtype`."""
    if not tensor.is_floating_point():
        return tensor.dtype
    return torch.float32 if key.startswith(prefixes) else dtype


@torch.no_grad()
def place(model: nn.Module, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """`model.to(device, dtype)`, except that the tensors of float32 modules (`keeps_float32`) keep float32.

    Tensors already in float32 there are moved, never cast down and up again, so their values are exact."""
    prefixes = float32_prefixes(model)
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                target = t.dtype if dtype is None else tensor_dtype(dtype, prefix + name, prefixes, t)
                moved = t.to(device=device if device is not None else t.device, dtype=target)
                if moved is t:
                    continue
                if isinstance(t, nn.Parameter):
                    t.data = moved  # keeps the Parameter object (optimizers, tied weights) as Module.to does
                else:
                    store[name] = moved
    return model


@torch.no_grad()
def convert_state(
    state: dict[str, torch.Tensor],
    device: str | torch.device,
    dtype: torch.dtype,
    prefixes: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Put every tensor of `state` (in place, one at a time, so the file's copy of each is released as it goes) on
    `device` in its final dtype (`tensor_dtype`): loading then assigns these tensors, with no full-model copy in
    the file's or any intermediate dtype."""
    for key in list(state):
        t = state[key]
        state[key] = t.to(device=device, dtype=tensor_dtype(dtype, key, prefixes, t))
    return state


def rebuild_rotary(llm: nn.Module, device: str | torch.device) -> None:
    """Recompute the LLaMA rotary module(s) of `llm` on `device` in float32 (their buffers are not in checkpoints,
    so a model built on the meta device has none)."""
    for name, module in list(llm.named_modules()):
        if "inv_freq" in getattr(module, "_buffers", {}) and hasattr(module, "config"):
            with torch.device(device):
                fresh = type(module)(module.config)
            parent_name, _, child = name.rpartition(".")
            parent = llm.get_submodule(parent_name) if parent_name else llm
            setattr(parent, child, fresh)
