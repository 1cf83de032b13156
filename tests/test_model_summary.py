"""`python -m model.summary`: per-component parameter counts of the presets, built on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.summary import main

ROOT = Path(__file__).resolve().parent.parent


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_preset_counts(capsys):
    summary = run_json(capsys, "--config", "lavit-7b")
    groups, comps = summary["groups"], summary["components"]
    # LLaMA-7B is 6,738,415,616 parameters with 32000 ids; 16386 more rows in embed_tokens and lm_head (4096 wide).
    assert groups["llm"] == 6_738_415_616 + 2 * 16_386 * 4096
    assert comps["llm.embed_tokens"]["parameters"]["language_model.model.embed_tokens.weight"] == [48386, 4096]
    assert 1.0e9 < comps["tokenizer.encoder"]["count"] < 1.02e9  # EVA-CLIP ViT-g/14 (~1.0B)
    assert comps["tokenizer.quantizer"]["count"] == 16384 * 32
    assert comps["pixel_decoder.unet"]["count"] == 859_520_964  # Stable Diffusion 1.5's UNet
    assert comps["understanding.merger"]["count"] == comps["tokenizer.merger"]["count"]
    assert summary["unassigned"] == {}
    assert summary["total"] == sum(c["count"] for c in comps.values())


def test_tiny_table_and_overrides(capsys):
    assert main(["--config", "lavit-tiny", "--params"]) == 0
    out = capsys.readouterr().out
    assert "llm.layers" in out and "language_model.model.layers.0.self_attn.q_proj.weight (64, 64)" in out
    summary = run_json(capsys, "--config", "lavit-tiny", "--set", "llm.num_layers=3")
    assert summary["components"]["llm.layers"]["parameters"].keys() >= {
        "language_model.model.layers.2.mlp.up_proj.weight"
    }
    fixed = run_json(capsys, "--config", "lavit-tiny", "--set", "tokenizer.fixed_length=true")
    assert "tokenizer.selector" not in fixed["components"]


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(Exception, match="lavit-7b"):
        main(["--config", "nope"])


def test_cli_help_is_instant():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "model.summary", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--config" in out.stdout
    assert "torch" not in {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
