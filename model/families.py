"""Model families: the one place that tells `train/`, `eval/` and `reproduce/` what a family is made of.

A family (LaVIT, VILA, ...) declares, in its own `model/<family>/family.py`:

* its training **stages**: name, config dataclass, trainer task, and which config keys name an upstream run
  (`python -m train STAGE` reads them from here; preset group `train/<stage>`);
* how to **load** a checkpoint for evaluation: a released directory in its official layout, or one of our own
  run directories (`load(path, device)` -> `LoadedModel`);
* its **evaluation adapter** (the object `eval/interface.py`'s request methods are called on) and its LLM for
  lm-eval (`LoadedModel.adapter`, `LoadedModel.lm`).

Everything is named as a lazy "module:attribute" string, so that `python -m train --help` imports no torch.
The registry is a plain dict filled by `register_family`, which rejects duplicates.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Modules that declare a family (imported on first use of the registry).
FAMILY_MODULES = ("model.lavit.family", "model.vila.family")


def resolve(target: str) -> Any:
    """"package.module:attribute" -> the attribute."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageSpec:
    name: str  # the launcher's STAGE argument, unique across families (`python -m train NAME`)
    config: str  # "module:Class" of the stage's config dataclass (its module registers the presets)
    task: str  # "module:Class" of the trainer task (`train/trainer.py`'s Task protocol)
    summary: str  # one line for `--help`
    upstream: dict[str, str] = field(default_factory=dict)  # config key -> stage whose run it names
    produces: str = ""  # what a finished run holds, for `--help` and the table machinery

    def config_class(self) -> type:
        return resolve(self.config)

    def task_class(self) -> type:
        return resolve(self.task)


@dataclass
class LoadedModel:
    """A checkpoint ready for evaluation."""

    model_id: str  # names the model and its weights (keeps prediction caches apart)
    adapter: Any  # implements a subset of eval/interface.py's request methods
    lm: Callable[[], Any]  # builds the lm-eval LM of the text-only path (lazily: it may need lm-eval)
    config: Any = None  # the model config (recorded with every result)
    source: str = ""  # "released", "run" or "llm run" (a text-only LLM: only `lm` serves)


@dataclass(frozen=True)
class Family:
    name: str  # "lavit", "vila"
    title: str  # "LaVIT (ICLR 2024)"
    stages: tuple[StageSpec, ...]
    loader: str  # "module:function" (path, device="cpu", **options) -> LoadedModel
    checkpoint_help: str = ""  # the layouts `loader` accepts, for error messages and --help

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"family {self.name!r} has no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def load(self, path: str, device: str = "cpu", **options: Any) -> LoadedModel:
        return resolve(self.loader)(path, device=device, **options)


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    clash = {s.name for s in family.stages} & {s.name for f in _FAMILIES.values() for s in f.stages}
    if clash:
        raise ValueError(f"family {family.name!r}: stage names {sorted(clash)} are already taken by another family")
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


def all_stages() -> dict[str, tuple[Family, StageSpec]]:
    """Every stage of every family, by its launcher name."""
    _load_all()
    return {s.name: (f, s) for f in _FAMILIES.values() for s in f.stages}


def get_stage(name: str) -> StageSpec:
    stages = all_stages()
    if name not in stages:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[name][1]


def stage_config_class(name: str) -> type:
    """The config dataclass of stage `name` (importing it registers the stage's presets)."""
    return get_stage(name).config_class()
