"""Model families: the one place that tells `train/`, `eval/` and `reproduce/` what a family is as a model.

A family (LaVIT, VILA, ...) declares, in its own `model/<family>/family.py`, how to **load** a checkpoint for
evaluation: a released directory in its official layout, or one of our own run directories (`load(path, device)`
-> `LoadedModel`: its evaluation adapter, the object `eval/interface.py`'s request methods are called on, and its
text-only LLM for lm-eval). Its training stages are declared one layer up, in `train/<family>/__init__.py`
(`train/registry.py`).

The loader is named as a lazy "module:attribute" string, so that listing the families imports no torch.
The registry is a plain dict filled by `register_family`, which rejects duplicates.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# Modules that declare a family (imported on first use of the registry).
FAMILY_MODULES = ("model.lavit.family", "model.vila.family")


def resolve(target: str) -> Any:
    """"package.module:attribute" -> the attribute."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TextLM:
    """The text-only causal LM of a loaded model, for the text tasks (MMLU, BBH, DROP): eval scores it through lm-eval
    (`eval.lm_adapter.text_lm`). A family with its own lm-eval model may hand that over as `LoadedModel.llm` instead."""

    model: Any  # a transformers causal LM (LlamaForCausalLM), in eval mode
    tokenizer: Any  # its text tokenizer
    device: str  # where the LM's inputs go


@dataclass
class LoadedModel:
    """A checkpoint ready for evaluation."""

    model_id: str  # names the model and its weights (keeps prediction caches apart)
    adapter: Any  # implements a subset of eval/interface.py's request methods
    llm: TextLM | Any | None  # the text-only LLM (None: the model has none, its text tasks are refused)
    config: Any = None  # the model config (recorded with every result)
    source: str = ""  # "released", "run" or "llm run" (a text-only LLM: only `llm` serves)


@dataclass(frozen=True)
class Family:
    name: str  # "lavit", "vila"
    title: str  # "LaVIT (ICLR 2024)"
    loader: str  # "module:function" (path, device="cpu", **options) -> LoadedModel
    checkpoint_help: str = ""  # the layouts `loader` accepts, for error messages and --help

    def load(self, path: str, device: str = "cpu", **options: Any) -> LoadedModel:
        return resolve(self.loader)(path, device=device, **options)


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)


def families() -> dict[str, Family]:
    _load_all()
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    _load_all()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]
