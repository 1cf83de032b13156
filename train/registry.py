"""Every model family's training stages: what `python -m train STAGE`, SLURM jobs and the table machinery look up.

A family declares its stages in `train/<family>/__init__.py` (`register_stages`); what it is as a model (its
checkpoint loader and evaluation adapter) is declared one layer down, in `model/<family>/family.py`
(`model/families.py`). A stage's config dataclass and trainer task are named as lazy "module:Class" strings, so that
`python -m train --help` imports no torch; the config's module registers the stage's presets (group `train/<stage>`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from model.families import get_family, resolve

# Packages that declare a family's stages (imported on first use of the registry).
STAGE_MODULES = ("train.lavit", "train.vila")


@dataclass(frozen=True)
class StageSpec:
    name: str  # the launcher's STAGE argument, unique across families (`python -m train NAME`)
    family: str  # the model family it trains (`model/families.py`)
    config: str  # "module:Class" of the stage's config dataclass (its module registers the presets)
    task: str  # "module:Class" of the trainer task (`train/trainer.py`'s Task protocol)
    summary: str  # one line for `--help`
    upstream: dict[str, str] = field(default_factory=dict)  # config key -> stage whose run it names
    produces: str = ""  # what a finished run holds, for `--help` and the table machinery

    def config_class(self) -> type:
        return resolve(self.config)

    def task_class(self) -> type:
        return resolve(self.task)


_STAGES: dict[str, StageSpec] = {}
_loaded = False


def register_stages(*stages: StageSpec) -> tuple[StageSpec, ...]:
    """Register training stages; a stage name is taken once across families, and its family must be a model family."""
    for spec in stages:
        get_family(spec.family)  # KeyError naming the families
        if spec.name in _STAGES:
            raise ValueError(f"stage {spec.name!r} of family {spec.family!r} is already a stage of family {_STAGES[spec.name].family!r}")
        _STAGES[spec.name] = spec
    return stages


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in STAGE_MODULES:
            importlib.import_module(module)


def all_stages() -> dict[str, StageSpec]:
    """Every stage of every family, by its launcher name."""
    _load_all()
    return dict(_STAGES)


def get_stage(name: str) -> StageSpec:
    stages = all_stages()
    if name not in stages:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[name]


def family_stages(family: str) -> tuple[StageSpec, ...]:
    """The stages of model family `family`, in the order they were declared (an unknown family is a KeyError)."""
    get_family(family)
    return tuple(s for s in all_stages().values() if s.family == family)


def stage_config_class(name: str) -> type:
    """The config dataclass of stage `name` (importing it registers the stage's presets)."""
    return get_stage(name).config_class()
