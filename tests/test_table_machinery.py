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

    def evaluate_row(family, checkpoint, output_dir, ctx, load_options=None):
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
    assert T._main(spec, _argv(tmp_path, "--check", "--update-band")) == 0
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
    provenance = json.loads((tmp_path / "results" / "provenance" / "lavit_table1.json").read_text())
    # each trained row names the evaluation it read: its last run's eval/ folder
    assert sorted(Path(d[0]).parent.name for d in provenance["evaluations"].values()) == [u.name for u in unified]
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
    assert T._main(spec, _argv(tmp_path, "--update-band")) == 0  # without --check the table is written and reported
    assert T._main(spec, _argv(tmp_path, "--check")) == 1
    # A run killed before it finished (no run.json) is resumed by the next table run, not restarted.
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("unified"))
    (run / "run.json").unlink()
    baseline["value"] = 0.0
    assert T._main(spec, _argv(tmp_path, "--check", "--update-band")) == 0
    assert json.loads((run / "run.json").read_text())["resumed_from_step"] == 2


def test_bad_input_is_one_line(spec, fake_eval, tmp_path, capsys):
    spec, _ = spec
    spec.profiles["mini"].rows["A"] = T.Trained("lavit", (T.StageRun("unified", inputs=(("tokenizer_checkpoint", "nope"),)),))
    assert T.main(spec, _argv(tmp_path)) == 2
    assert "names no earlier stage" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Reported (not gated) claims and the regression band.

REPORTED_REF = MINI_REF + """
  - id: b_beats_a
    statement: "B beats A (a paper claim restated at mini scale: reported, not gated)"
    where: "test"
    gate: false
    checks:
      - {row: B, than: A, columns: [Score], is: better}
"""


def _computed_spec(tmp_path, monkeypatch, values: dict[str, float], reference: str = REPORTED_REF) -> T.TableSpec:
    """A table of Computed rows only (nothing trains): its cells are whatever `values` holds when measured."""
    (tmp_path / "mini").mkdir(exist_ok=True)
    (tmp_path / "mini" / "lavit_table0.yaml").write_text(reference)
    monkeypatch.setattr(T, "MINI_REFERENCE_DIR", tmp_path / "mini")
    monkeypatch.setattr(T, "check_data", lambda tasks, root: None)
    rows = {name: T.Computed(lambda ctx, name=name: {"Score": values[name]}) for name in ("A", "B", "Baseline")}
    profile = T.Profile(rows=rows, columns=(T.Column("Score", "toy_task", "score"),), reference="mini/lavit_table0",
                        data="data-root", band_rules={"Score": __import__("reproduce.compare", fromlist=["BandRule"]).BandRule(0.0, 0.5)})
    return T.TableSpec(key="lavit_table1", script="reproduce/test_table.py", profiles={"mini": profile})


def test_a_claim_with_gate_false_is_reported_but_does_not_fail_check(tmp_path, monkeypatch, capsys):
    values = {"A": 2.0, "B": 1.0, "Baseline": 0.0}  # a_beats_baseline holds (gates); b_beats_a fails (reported)
    spec = _computed_spec(tmp_path, monkeypatch, values)
    assert T._main(spec, _argv(tmp_path, "--check", "--update-band")) == 0
    out = capsys.readouterr().out
    assert "claim b_beats_a: FAILS (reported, not gated)" in out and "Score: B 1 better than A 2: NO" in out
    frame = pd.read_csv(tmp_path / "results" / "lavit_table1.csv")
    claims = frame[(frame["kind"] == "claim") & (frame["section"] == "mini")].set_index("claim")
    assert claims.loc["b_beats_a", "verdict"] == "fails" and not bool(claims.loc["b_beats_a", "gate"])
    assert "**fails** (reported, not gated)" in (tmp_path / "results" / "lavit_table1.md").read_text()
    # The same failure in a gating claim fails --check.
    values["Baseline"] = 5.0
    assert T._main(spec, _argv(tmp_path, "--check", "--update-band")) == 1
    # A claim that is not measured fails --check even when it does not gate: the pipeline did not produce it.
    del values["B"]
    spec.profiles["mini"].rows["B"] = T.Computed(lambda ctx: {})
    values["Baseline"] = 0.0
    assert T._main(spec, _argv(tmp_path, "--update-band")) == 0
    assert T._main(spec, _argv(tmp_path, "--check")) == 1
    assert "not measured" in capsys.readouterr().err


def test_the_regression_band_gates_check(tmp_path, monkeypatch, capsys):
    from reproduce.compare import BAND_NOTE

    values = {"A": 2.0, "B": 1.0, "Baseline": 0.0}
    spec = _computed_spec(tmp_path, monkeypatch, values)
    band_file = tmp_path / "mini" / "lavit_table1.band.json"
    # No band yet: --check refuses before measuring, naming the file and the way to write it.
    with pytest.raises(T.InputError, match="lavit_table1.band.json not found: run the table script once with --update-band"):
        T._main(spec, _argv(tmp_path, "--check"))
    assert T._main(spec, _argv(tmp_path, "--update-band")) == 0
    band = json.loads(band_file.read_text())
    assert band["note"] == BAND_NOTE and "NOT the paper's numbers" in band["note"]
    assert band["cells"] == {r: {"Score": {"value": v, "tolerance": 0.5}} for r, v in values.items()}
    assert T._main(spec, _argv(tmp_path, "--check")) == 0
    values["A"] = 2.4  # inside the band (0.5): still passes; the claim still holds
    assert T._main(spec, _argv(tmp_path, "--check")) == 0
    values["A"] = 2.6  # outside: fails, although every gating claim holds
    assert T._main(spec, _argv(tmp_path, "--check")) == 1
    err = capsys.readouterr().err
    assert "outside the regression band" in err and "outside" in err
    md = (tmp_path / "results" / "lavit_table1.md").read_text()
    assert "Regression band" in md and "| A | Score | 2 | 0.5 | 2.6 | outside |" in md
    # A band from another run is malformed input, named.
    band_file.write_text('{"cells": {"A": {"Score": {"value": "x"}}}}')
    with pytest.raises(T.InputError, match="malformed"):
        T._main(spec, _argv(tmp_path, "--check"))


def test_band_compare_names_cells_not_measured_and_not_banded():
    from reproduce.compare import BandRule, compare_band, make_band

    measured = pd.DataFrame({"X": [10.0, float("nan")], "Y": [200.0, 3.0]}, index=["r1", "r2"])
    band = make_band(measured, "t", "mini", {"Y": BandRule(relative=0.05, floor=1.0)})
    assert band["cells"] == {"r1": {"X": {"value": 10.0, "tolerance": 1.0}, "Y": {"value": 200.0, "tolerance": 10.0}},
                             "r2": {"Y": {"value": 3.0, "tolerance": 1.0}}}
    later = pd.DataFrame({"X": [10.9, 7.0], "Y": [float("nan"), 3.0]}, index=["r1", "r2"])
    verdicts = {(r.row, r.column): r.verdict for r in compare_band(band, later).itertuples()}
    assert verdicts == {("r1", "X"): "inside", ("r1", "Y"): "not measured", ("r2", "Y"): "inside", ("r2", "X"): "not in band"}


def test_gate_must_be_a_boolean(tmp_path):
    from reproduce.reference import ReferenceError, load_reference

    path = tmp_path / "lavit_table0.yaml"
    path.write_text(REPORTED_REF.replace("gate: false", "gate: maybe"))
    with pytest.raises(ReferenceError, match="'gate' must be true or false"):
        load_reference(path)


# ---------------------------------------------------------------------------------------------
# The ablation tables: declared rows resolve to runs (nothing trains here).


def _plans(spec: T.TableSpec, profile: str, tmp_path: Path) -> dict[str, list[T.PlannedStage]]:
    ctx = T.Context(spec, profile, spec.profiles[profile], tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
    return {label: T.plan_chain(row, ctx) for label, row in spec.profiles[profile].rows.items() if isinstance(row, T.Trained)}


def test_ablation_tables_share_table1_runs_and_switch_one_thing(tmp_path):
    from reproduce.table1 import TABLE as TABLE1
    from reproduce.table3 import TABLE_3A, TABLE_3B
    from reproduce.table6 import TABLE_6
    from reproduce.table7 import TABLE_7A, TABLE_7B
    from reproduce.table8 import TABLE_8

    table1 = [s.directory for s in _plans(TABLE1, "mini", tmp_path)["Ours (mini LaVIT)"]]
    switched = {}
    for spec, shared, other in ((TABLE_3A, "Classification", "Regression"), (TABLE_3B, "Dynamic", "Fixed"),
                                (TABLE_7A, "Continuous", "Quantized"), (TABLE_7B, "Unlock LLM", "Frozen LLM"),
                                (TABLE_6, "Causal Attention", "Bi-directional Attention"),
                                (TABLE_8, "w/ Token Merger", "w/o Token Merger")):
        plans = _plans(spec, "mini", tmp_path)
        assert [s.directory for s in plans[shared]] == table1  # the very runs of Table 1
        assert [s.directory for s in plans[other]][:1] == table1[:1]  # llm_pretrain shared (the encoder is the release)
        switched[other] = plans[other]
    assert switched["Regression"][1].directory == table1[1] != switched["Fixed"][1].directory  # 3b retrains stage 1a
    assert switched["Regression"][2].config.model.ablation.visual_objective == "regression"
    assert switched["Fixed"][1].config.tokenizer.fixed_length and switched["Fixed"][2].config.model.tokenizer.fixed_length
    assert switched["Quantized"][2].config.model.ablation.understanding_input == "quantized"
    assert switched["Frozen LLM"][2].config.model.ablation.freeze_llm
    # Tables 6 and 8 switch the tokenizer: stage 1a is retrained and stage 2 builds the same tokenizer
    bidirectional = switched["Bi-directional Attention"]
    assert bidirectional[1].config.tokenizer.merger_attention == "bidirectional" != table1_merger(tmp_path, TABLE1)
    assert bidirectional[2].config.model.tokenizer.merger_attention == "bidirectional"
    no_merger = switched["w/o Token Merger"]
    assert not no_merger[1].config.tokenizer.use_merger and not no_merger[2].config.model.tokenizer.use_merger
    stage_1a = {s[1].directory for s in switched.values()} | {table1[1]}
    assert len(stage_1a) == 4  # Table 1's, Fixed's, Bi-directional's, w/o merger's
    assert len({s[2].directory for s in switched.values()} | {table1[2]}) == 7
    # Every stage 1a starts from the mini release's encoder, through the key that takes the released EVA-CLIP file.
    from reproduce.mini_release import release_file

    assert all(s[1].config.encoder_path == str(release_file("encoder")) for s in switched.values())


def table1_merger(tmp_path, table1) -> str:
    return _plans(table1, "mini", tmp_path)["Ours (mini LaVIT)"][1].config.tokenizer.merger_attention


def test_paper_profiles_plan_with_the_paper_presets_without_running(tmp_path):
    from harness.config import get_preset
    from reproduce.table3 import TABLE_3A, TABLE_3B
    from reproduce.table6 import TABLE_6
    from reproduce.table7 import TABLE_7A, TABLE_7B
    from reproduce.table8 import TABLE_8

    paper_unified = get_preset("train/unified", "paper")
    shared = None
    for spec in (TABLE_3A, TABLE_3B, TABLE_6, TABLE_7A, TABLE_7B, TABLE_8):
        profile = spec.profiles["paper"]
        assert profile.mode == "numeric" and profile.reference == spec.key and profile.data == "data-root"
        plans = _plans(spec, "paper", tmp_path)
        assert set(plans) == set(T.reference_for(spec.key).rows)  # every printed row is declared
        for label, chain in plans.items():
            assert [s.run.stage for s in chain] == ["tokenizer", "unified"]
            unified = chain[-1].config
            assert (unified.loop.steps, unified.loop.global_batch_size, unified.seq_len) == (
                paper_unified.loop.steps, paper_unified.loop.global_batch_size, paper_unified.seq_len)
            assert unified.tokenizer_checkpoint == str(chain[0].directory)
            assert unified.llm_path == str(tmp_path / "data" / "weights" / "llama-7b")
            assert set(unified.data.text_sources) == set(paper_unified.data.text_weights)  # Table 5's subsets
            assert not any(s.done for s in chain) and not (tmp_path / "runs").exists()  # nothing ran
        baseline = [p for p in plans.values() if not _switched(p[-1].config)]
        assert len(baseline) == 1
        shared = shared or baseline[0][-1].directory
        assert baseline[0][-1].directory == shared  # one paper-scale baseline run serves all six tables


def _switched(config) -> bool:
    ablation = config.model.ablation
    return (ablation.visual_objective != "classification" or ablation.understanding_input != "continuous"
            or ablation.freeze_llm or config.model.tokenizer.fixed_length
            or config.model.tokenizer.merger_attention != "causal" or not config.model.tokenizer.use_merger)


def test_two_table_scripts_report_bad_input_once(tmp_path, capsys):
    from reproduce import table3, table7

    base = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert table3.run(["--profile", "paper", *base]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: profile 'paper' evaluates on the benchmarks: pass --data-root DIR"]
    assert table7.run(["--profile", "paper", "--data-root", str(tmp_path), "--update-band", *base]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --update-band: profile 'paper' is checked against the paper's numbers, it has no regression band"]
    assert not (tmp_path / "res").exists() and not (tmp_path / "runs").exists()


def test_seeded_rows_share_seed_zero_runs_and_report_mean_and_spread(tmp_path):
    from reproduce.table1 import TABLE as TABLE1
    from reproduce.table6 import TABLE_6

    table1 = [s.directory for s in _plans(TABLE1, "mini", tmp_path)["Ours (mini LaVIT)"]]
    spec = TABLE_6
    row = spec.profiles["mini"].rows["Causal Attention"]
    assert row.seeds == (0, 1)
    ctx = T.Context(spec, "mini", spec.profiles["mini"], tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
    seed0 = [s.directory for s in T.plan_chain(row.with_seed(0), ctx)]
    seed1 = T.plan_chain(row.with_seed(1), ctx)
    assert seed0 == table1  # seed 0 adds no override: Table 1's runs
    assert [s.directory for s in seed1][:2] == table1[:2] and seed1[2].directory != table1[2]  # only stage 2 re-seeded
    assert seed1[2].config.loop.seed == 1

    ctx.seed_cells["Causal Attention"] = {0: {"CIDEr": 260.0, "VQA": 37.0}, 1: {"CIDEr": 280.0, "VQA": 38.0}}
    frame = T.seed_frame(ctx).set_index("column")
    assert frame.loc["CIDEr", "mean"] == 270.0 and frame.loc["CIDEr", "spread"] == 20.0
    assert frame.loc["VQA", "seed 0"] == 37.0 and frame.loc["VQA", "seed 1"] == 38.0
    assert "Seeds" in T.seed_markdown(ctx)
    assert T.seed_spreads(ctx) == {("Causal Attention", "CIDEr"): 20.0, ("Causal Attention", "VQA"): 1.0}


# ---------------------------------------------------------------------------------------------
# Code-aware reuse: a run records the code that trained it (harness/code_identity.py).


def test_a_run_made_by_other_code_is_retrained_or_with_reuse_stale_marked(spec, fake_eval, tmp_path, capsys):
    from train.stages import trainings

    spec, _ = spec
    assert T._main(spec, _argv(tmp_path)) == 0
    tokenizer = next((tmp_path / "runs").glob("tokenizer-*"))
    summary = json.loads((tokenizer / "run.json").read_text())
    changed = "model/lavit/token_merger.py"
    assert changed in summary["code"]["files"]  # stage 1a loaded the merger's source
    summary["code"]["files"][changed] = "0" * 16  # as if the merger had changed since this run was trained
    summary["code"]["git_revision"] = "abcdef1234567890"
    (tokenizer / "run.json").write_text(json.dumps(summary))
    capsys.readouterr()

    assert T._main(spec, _argv(tmp_path, "--reuse-stale")) == 0
    out = capsys.readouterr().out
    assert f"reuse STALE run {tokenizer.name}" in out and "STALE row 'A'" in out
    frame = pd.read_csv(tmp_path / "results" / "lavit_table1.csv")
    stale = frame[frame["row"].isin(["A", "B"])]["stale"]
    assert stale.notna().all() and stale.str.startswith("stale: trained at abcdef1234; changed since: ").all()
    assert stale.str.contains(changed, regex=False).all()
    assert frame[frame["row"] == "Baseline"]["stale"].isna().all()  # a computed row is not affected
    assert "STALE rows" in (tmp_path / "results" / "lavit_table1.md").read_text()
    assert T._main(spec, _argv(tmp_path, "--reuse-stale", "--check", "--update-band")) == 1  # stale numbers never pass a check

    # By default the stale run is set aside and retrained, and so is every run trained from it.
    assert T._main(spec, _argv(tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"run {tokenizer.name} is stale (trained at abcdef1234; changed since: " in out and changed in out
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs" / ".stale").iterdir()) == ["tokenizer", "unified", "unified"]
    for run in (tmp_path / "runs").glob("*-*"):
        assert trainings(run) == 1
    assert "stale" not in pd.read_csv(tmp_path / "results" / "lavit_table1.csv").columns


def test_changed_files_names_what_changed(tmp_path, monkeypatch):
    import harness.code_identity as C

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(C, "CHECKOUT", tmp_path)
    record = {"files": {"model/a.py": C._digest(tmp_path / "model" / "a.py")}, "git_revision": "0123456789abcdef+dirty"}
    assert C.changed_files(record) == []
    (tmp_path / "model" / "a.py").write_text("x = 2\n")
    assert C.changed_files(record) == ["model/a.py"]
    assert C.made_at(record) == "0123456789+dirty"
    assert C.changed_files(None) is None and "no record" in C.describe_change({})


def test_documentation_edits_leave_the_code_digest_alone_and_code_edits_change_it(tmp_path):
    import harness.code_identity as C

    def digest(source: str) -> str:
        path = tmp_path / "m.py"
        path.write_text(source)
        return C._digest(path)

    base = digest('"""Module."""\n\ndef f(x):\n    """Twice x."""\n    return 2 * x\n\n\nclass A:\n    """A."""\n')
    # Docstrings, comments, blank lines: documentation.
    assert digest('"""Module, said\nbetter."""\n# why\n\n\ndef f(x):\n    """Twice."""\n    return 2 * x  # doubled\n'
                  '\n\nclass A:\n    """Another A."""\n') == base
    assert digest('def f(x):\n    return 2 * x\n\n\nclass A:\n    pass\n') == base  # a body of only a docstring is a pass
    # Anything that runs: code.
    assert digest('"""Module."""\n\ndef f(x):\n    """Twice x."""\n    return 3 * x\n\n\nclass A:\n    """A."""\n') != base
    assert digest('"""Module."""\n\ndef f(x):\n    """Twice x."""\n    return "2" * x\n\n\nclass A:\n    """A."""\n') != base
    assert digest('"""Module."""\nX = "not a docstring"\n\ndef f(x):\n    return 2 * x\n\n\nclass A:\n    """A."""\n') != base
    assert digest("def f(:\n") != digest("def f(:  \n")  # does not parse: hashed as bytes
