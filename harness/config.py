"""One configuration mechanism for every entry point (train, eval, reproduce).

A config is a (nested) dataclass. It is resolved in a fixed order:

    preset (named, registered in code)  ->  YAML file  ->  dotted overrides (`--set a.b=3`)

Every layer is checked against the dataclass: an unknown key or a value of the wrong type is an
error that names the full dotted key, the expected type and the value that was given. The resolved
config is written next to every output (`save_config`) so a result always describes itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin

import yaml

from harness.errors import InputError

C = TypeVar("C")


class ConfigError(InputError):
    """A config key or value that does not fit the dataclass."""


# ---------------------------------------------------------------------------------------------
# Presets: a plain dict per config class, filled by a decorator that rejects duplicates.

_PRESETS: dict[str, dict[str, Callable[[], Any]]] = {}


def register_preset(group: str, name: str):
    """Register `fn() -> config` as preset `name` of `group` (e.g. group "lavit", name "mini")."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        table = _PRESETS.setdefault(group, {})
        if name in table:
            raise ConfigError(f"preset {group}/{name} is registered twice")
        table[name] = fn
        return fn

    return wrap


def preset_names(group: str) -> list[str]:
    return sorted(_PRESETS.get(group, {}))


def get_preset(group: str, name: str) -> Any:
    table = _PRESETS.get(group, {})
    if name not in table:
        raise ConfigError(f"unknown preset {name!r} for {group!r}; known presets: {', '.join(sorted(table)) or 'none'}")
    return table[name]()


# ---------------------------------------------------------------------------------------------
# Type checking and coercion of plain values (from YAML or the command line) into dataclass fields.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return merge(tp(), value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; a float field accepts it.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def merge(config: C, updates: dict[str, Any], prefix: str = "") -> C:
    """Return a copy of `config` with nested `updates` applied; unknown keys are errors."""
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"{prefix or 'config'} is not a dataclass")
    types_ = _field_types(type(config))
    changes = {}
    for name, value in updates.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in types_:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(types_)}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = merge(current, value, prefix=key)
        else:
            changes[name] = _coerce(value, types_[name], key)
    return dataclasses.replace(config, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """`"a.b.c=3"` -> `{"a": {"b": {"c": 3}}}`; the value is parsed as YAML (so 1e-4, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    path, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = {}
    node = nested
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def resolve(
    config: C,
    yaml_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> C:
    """Apply a YAML file, then dotted overrides, to `config`."""
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        config = merge(config, data)
    for text in overrides:
        config = merge(config, parse_override(text))
    return config


def to_dict(config: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    return merge(cls(), data)


def save_config(config: Any, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML next to an output (atomically)."""
    from harness.io import atomic_write_text

    path = Path(directory) / name
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def load_config(cls: type[C], path: str | Path) -> C:
    return resolve(cls(), yaml_path=path)


# ---------------------------------------------------------------------------------------------
# Command line: every entry point takes the same three flags.


def add_config_arguments(parser: argparse.ArgumentParser, group: str, default: str | None = None) -> None:
    names = preset_names(group)
    parser.add_argument(
        "--config",
        default=default,
        metavar="PRESET",
        help=f"named preset ({', '.join(names) if names else 'none registered'})",
    )
    parser.add_argument("--config-file", metavar="YAML", help="YAML file applied on top of the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override applied last, e.g. --set tokenizer.codebook_size=1024 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, group: str) -> Any:
    if not args.config:
        raise ConfigError(f"--config is required; presets for {group!r}: {', '.join(preset_names(group))}")
    return resolve(get_preset(group, args.config), args.config_file, args.overrides)
