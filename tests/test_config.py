"""The configuration mechanism: presets, YAML, dotted overrides, and errors that name the key."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from harness.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    from_dict,
    get_preset,
    merge,
    parse_override,
    register_preset,
    resolve,
    save_config,
    to_dict,
)


@dataclass
class TokenizerCfg:
    codebook_size: int = 16384  # number of visual codes
    keep_ratio: float = 1 / 3  # target fraction of kept patches
    selection: Literal["deterministic", "sampled"] = "deterministic"


@dataclass
class OptimCfg:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: Optional[int] = None


@dataclass
class RunCfg:
    name: str = "run"
    tokenizer: TokenizerCfg = field(default_factory=TokenizerCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    layers: list[int] = field(default_factory=lambda: [1, 2])
    bf16: bool = True


@register_preset("test-run", "paper")
def _paper() -> RunCfg:
    return RunCfg(name="paper")


@register_preset("test-run", "mini")
def _mini() -> RunCfg:
    return RunCfg(name="mini", tokenizer=TokenizerCfg(codebook_size=64))


def test_dotted_override_changes_only_that_key():
    cfg = resolve(get_preset("test-run", "paper"), overrides=["tokenizer.codebook_size=1024"])
    assert cfg.tokenizer.codebook_size == 1024
    assert cfg.tokenizer.keep_ratio == pytest.approx(1 / 3)
    assert cfg.name == "paper"


def test_override_values_are_parsed_as_yaml():
    cfg = resolve(RunCfg(), overrides=["optim.lr=1e-4", "optim.betas=[0.9, 0.99]", "bf16=false", "optim.warmup=200"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.bf16 is False
    assert cfg.optim.warmup == 200


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert resolve(RunCfg(), overrides=["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"tokenizer\.codebook_size: expected int, got 10\.5"):
        resolve(RunCfg(), overrides=["tokenizer.codebook_size=10.5"])


def test_unknown_key_is_an_error_naming_the_dotted_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'tokenizer\.codebok_size'"):
        resolve(RunCfg(), overrides=["tokenizer.codebok_size=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        merge(RunCfg(), {"nope": 1})


def test_wrong_types_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"bf16: expected bool"):
        resolve(RunCfg(), overrides=["bf16=yes please"])
    with pytest.raises(ConfigError, match=r"tokenizer\.selection: expected one of"):
        resolve(RunCfg(), overrides=["tokenizer.selection=greedy"])
    with pytest.raises(ConfigError, match=r"optim\.betas: expected 2 items"):
        resolve(RunCfg(), overrides=["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"layers\[1\]: expected int"):
        resolve(RunCfg(), overrides=["layers=[1, x]"])
    with pytest.raises(ConfigError, match=r"tokenizer: expected a mapping"):
        resolve(RunCfg(), overrides=["tokenizer=3"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("tokenizer.codebook_size")


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"tokenizer": {"codebook_size": 512}, "optim": {"lr": "2e-4"}}))
    cfg = resolve(get_preset("test-run", "mini"), yaml_path=path, overrides=["tokenizer.codebook_size=8"])
    assert cfg.name == "mini"
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.tokenizer.codebook_size == 8  # the override wins over the file


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(RunCfg(), yaml_path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.momentum'"):
        resolve(RunCfg(), yaml_path=bad)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*mini, paper"):
        get_preset("test-run", "huge")


def test_duplicate_preset_registration_is_rejected():
    with pytest.raises(ConfigError, match="registered twice"):
        register_preset("test-run", "paper")(lambda: RunCfg())


def test_saved_config_round_trips(tmp_path):
    cfg = resolve(get_preset("test-run", "mini"), overrides=["optim.betas=[0.5, 0.6]"])
    path = save_config(cfg, tmp_path / "out")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = from_dict(RunCfg, yaml.safe_load(path.read_text()))
    assert loaded == cfg
    assert to_dict(loaded)["optim"]["betas"] == [0.5, 0.6]


def test_command_line_flags():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "test-run")
    args = parser.parse_args(["--config", "mini", "--set", "bf16=false", "--set", "optim.lr=3e-5"])
    cfg = config_from_args(args, "test-run")
    assert (cfg.name, cfg.bf16, cfg.optim.lr) == ("mini", False, pytest.approx(3e-5))
    with pytest.raises(ConfigError, match="--config is required"):
        config_from_args(parser.parse_args([]), "test-run")
