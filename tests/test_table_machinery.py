"""The table machinery: run directories keyed by config hashes, shared prefixes, reuse of finished runs, results
without timestamps, --check verdicts. Training goes through the real launcher on the mini presets (2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reproduce import table as T

MINI_REF = """
paper: lavit
table: "0"
title: "machinery test"
source: "test"
defaults: {higher_is_better: true, target: false}
columns:
  Score: {metric: score}
rows:
  - {row: A}
  - {row: B}
  - {row: Baseline}
claims:
  - id: a_beats_baseline
    statement: "A beats the baseline"
    where: "test"
    checks:
      - {row: A, than: Baseline, columns: [Score], is: better}
"""

TOKENIZER = T.StageRun("tokenizer", overrides=("loop.steps=2", "vq_start_step=1", "kmeans_images=4"))


def _chain(lr: str) -> tuple[T.StageRun, ...]:
    unified = T.StageRun(
        "unified",
        overrides=("loop.steps=2", f"optim.lr={lr}", "loop.checkpoint_every=1"),
        inputs=(("tokenizer_checkpoint", "tokenizer"),),
    )
    return (TOKENIZER, unified)


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "lavit_table0.yaml").write_text(MINI_REF)
    monkeypatch.setattr(T, "MINI_REFERENCE_DIR", tmp_path / "mini")
    baseline = {"value": 0.5}
    profile = T.Profile(
        rows={
            "A": T.Trained("lavit", _chain("1e-3")),
            "B": T.Trained("lavit", _chain("2e-3")),
            "Baseline": T.Computed(lambda ctx: {"Score": baseline["value"]}),
        },
        columns=(T.Column("Score", "toy_task", "score"),),
        reference="mini/lavit_table0",
        data="data-root",
    )
    return T.TableSpec(key="lavit_table1", script="reproduce/test_table.py", profiles={"mini": profile}), baseline


@pytest.fixture
def fake_eval(monkeypatch):
    calls = []

    def evaluate_row(family, checkpoint, output_dir, ctx):
        calls.append(Path(checkpoint))
        steps = json.loads((Path(checkpoint) / "run.json").read_text())["last_step"]
        return pd.DataFrame([{"task": "toy_task", "metric": "score", "value": float(steps)}])

    monkeypatch.setattr(T, "evaluate_row", evaluate_row)
    monkeypatch.setattr(T, "check_data", lambda tasks, root: None)
    return calls


def _argv(tmp_path, *extra):
    return ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--data-root", str(tmp_path), *extra]


def test_chains_share_runs_finished_runs_are_reused_and_results_are_stable(spec, fake_eval, tmp_path, capsys):
    spec, _ = spec
    assert T._main(spec, _argv(tmp_path, "--check")) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    # One tokenizer run shared by both rows, one unified run per learning rate.
    assert [r.split("-")[0] for r in runs] == ["tokenizer", "unified", "unified"]
    unified = [tmp_path / "runs" / r for r in runs if r.startswith("unified")]
    for run in unified:  # stage 2 started from the tokenizer run the chain names
        assert str(tmp_path / "runs" / runs[0]) in (run / "config.yaml").read_text()
    first = (tmp_path / "results" / "lavit_table1.csv").read_bytes()
    stamps = {r: (tmp_path / "runs" / r / "run.json").stat().st_mtime_ns for r in runs}

    assert T._main(spec, _argv(tmp_path, "--check")) == 0  # everything reused: no run is touched
    assert stamps == {r: (tmp_path / "runs" / r / "run.json").stat().st_mtime_ns for r in runs}
    assert (tmp_path / "results" / "lavit_table1.csv").read_bytes() == first  # no timestamp in the committed file
    frame = pd.read_csv(tmp_path / "results" / "lavit_table1.csv")
    claim = frame[(frame["kind"] == "claim") & (frame["section"] == "mini")]
    assert list(claim["verdict"]) == ["holds"]
    assert (tmp_path / "results" / "provenance" / "lavit_table1.json").is_file()
    assert "A beats the baseline" in (tmp_path / "results" / "lavit_table1.md").read_text()


def test_hash_follows_the_config_and_upstream(spec, tmp_path):
    spec, _ = spec
    ctx = T.Context(spec, "mini", spec.profiles["mini"], tmp_path / "runs", tmp_path, tmp_path, None, "local", "cpu")
    a = T.plan_chain(spec.profiles["mini"].rows["A"], ctx)
    b = T.plan_chain(spec.profiles["mini"].rows["B"], ctx)
    assert a[0].directory == b[0].directory and a[1].directory != b[1].directory
    # Reporting-only keys do not change a run's identity; a changed upstream changes every run after it.
    quiet = T.Trained("lavit", (T.StageRun("tokenizer", TOKENIZER.overrides + ("loop.progress=true",)), a[1].run))
    assert T.plan_chain(quiet, ctx)[0].directory == a[0].directory
    longer = T.Trained("lavit", (T.StageRun("tokenizer", ("loop.steps=3", "vq_start_step=1", "kmeans_images=4")), a[1].run))
    changed = T.plan_chain(longer, ctx)
    assert changed[0].directory != a[0].directory and changed[1].directory != a[1].directory


def test_a_failing_claim_fails_check_and_an_unfinished_run_resumes(spec, fake_eval, tmp_path):
    spec, baseline = spec
    baseline["value"] = 100.0  # the baseline now beats every row
    assert T._main(spec, _argv(tmp_path)) == 0  # without --check the table is written and reported
    assert T._main(spec, _argv(tmp_path, "--check")) == 1
    # A run killed before it finished (no run.json) is resumed by the next table run, not restarted.
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("unified"))
    (run / "run.json").unlink()
    baseline["value"] = 0.0
    assert T._main(spec, _argv(tmp_path, "--check")) == 0
    assert json.loads((run / "run.json").read_text())["resumed_from_step"] == 2


def test_bad_input_is_one_line(spec, fake_eval, tmp_path, capsys):
    spec, _ = spec
    spec.profiles["mini"].rows["A"] = T.Trained("lavit", (T.StageRun("unified", inputs=(("tokenizer_checkpoint", "nope"),)),))
    assert T.main(spec, _argv(tmp_path)) == 2
    assert "names no earlier stage" in capsys.readouterr().err
