"""LaVIT Table 9 against the `paper` training presets: every printed hyper-parameter matches, and a
drifted preset is caught."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness import config as config_module
from reproduce.compare import compare

SCRIPT = Path(__file__).resolve().parent.parent / "reproduce" / "table9.py"
spec = importlib.util.spec_from_file_location("table9", SCRIPT)
table9 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table9)


def test_paper_presets_match_table9(tmp_path):
    assert table9.main(["--check", "--results-dir", str(tmp_path)]) == 0
    result = compare("lavit_table9", table9.measured_table())
    targets = result.numbers[result.numbers["target"]]
    assert len(targets) == 22 and (targets["verdict"] == "match").all()
    settings = table9.settings_table()
    assert set(settings["preset"]) == {"cosine", "bf16"}  # printed "Cosine" and "bfloat16"


def test_a_drifted_preset_fails_the_check(tmp_path, monkeypatch):
    original = config_module.get_preset

    def drifted(group, name):
        cfg = original(group, name)
        if group == "train/unified":
            cfg.optim.warmup_steps = 2500
        return cfg

    monkeypatch.setattr(table9, "get_preset", drifted)
    assert table9.main(["--check", "--results-dir", str(tmp_path)]) == 1
    result = compare("lavit_table9", table9.measured_table())
    bad = result.failures
    assert list(zip(bad["row"], bad["column"])) == [("Warm-up steps", "VL Pre-training")]
    assert bad["delta"].item() == pytest.approx(500)
