"""Numeric and claim verdicts on synthetic result frames, the written files, and a failing --check."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from reproduce import compare as cmp
from reproduce.reference import load_reference

TABLE = """
paper: lavit
table: "3b"
title: Ablations for the effect of different tokenization strategies
source: "LaVIT (ICLR 2024), Table 3b"
defaults: {metric: CIDEr, higher_is_better: true}
columns:
  Num: {metric: mean visual tokens per image, higher_is_better: false, tolerance: 5}
  Time: {metric: pre-training hours, higher_is_better: false, target: false}
  Flickr: {}
  VQAv2: {metric: VQA accuracy}
rows:
  - {row: Fixed, Num: 256, Time: {printed: 30h, value: 30}, Flickr: 71.1, VQAv2: 56.5}
  - {row: Dynamic, Num: 94, Time: {printed: 18h, value: 18}, Flickr: 74.0, VQAv2: 57.7}
  - {row: Baseline, target: false, Flickr: 60.0}
claims:
  - id: dynamic_beats_fixed
    statement: "the dynamic visual tokenizer achieves superior performance while only requiring 94 tokens"
    where: "§4.3"
    checks:
      - {row: Dynamic, than: Fixed, columns: [Flickr, VQAv2], is: better}
      - {row: Dynamic, than: Fixed, columns: [Num], is: lower}
  - id: dynamic_under_100_tokens
    statement: "only requiring 94 tokens on average"
    where: "§4.3"
    checks:
      - {row: Dynamic, than: {value: 100}, columns: [Num], is: lower}
"""


@pytest.fixture()
def ref(tmp_path):
    path = tmp_path / "lavit_table3b.yaml"
    path.write_text(TABLE)
    return load_reference(path)


def frame(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index")


def verdict(result, row, column):
    n = result.numbers
    return n[(n["row"] == row) & (n["column"] == column)]["verdict"].item()


def test_numeric_verdicts(ref):
    measured = frame({"Fixed": {"Num": 256, "Flickr": 70.5, "VQAv2": 58.0}, "Dynamic": {"Num": 101, "Flickr": 74.9}})
    result = cmp.compare(ref, measured, mode="numeric")
    assert verdict(result, "Fixed", "Flickr") == "match"  # |70.5-71.1| = 0.6 <= 1.0
    assert verdict(result, "Fixed", "VQAv2") == "mismatch"  # 1.5 > 1.0
    assert verdict(result, "Dynamic", "Num") == "mismatch"  # 7 > 5 tokens
    assert verdict(result, "Dynamic", "Flickr") == "match"
    assert verdict(result, "Dynamic", "VQAv2") == "not measured"
    assert verdict(result, "Fixed", "Time") == "reference only"  # hardware time: never a target
    assert verdict(result, "Baseline", "Flickr") == "reference only"
    delta = result.numbers.set_index(["row", "column"]).loc[("Fixed", "Flickr"), "delta"]
    assert delta == pytest.approx(-0.6)
    assert not result.passed
    assert set(result.failures["verdict"]) == {"mismatch", "not measured"}


def test_numeric_all_match_passes(ref):
    measured = ref.values().loc[["Fixed", "Dynamic"], ["Num", "Flickr", "VQAv2"]] + 0.3
    result = cmp.compare(ref, measured, mode="numeric")
    assert result.passed, result.failures


def test_claim_verdicts(ref):
    holds = frame({"Fixed": {"Num": 256, "Flickr": 10.0, "VQAv2": 20.0}, "Dynamic": {"Num": 90, "Flickr": 11.0, "VQAv2": 21.0}})
    result = cmp.compare(ref, holds, mode="claim", profile="mini")
    assert result.claims.set_index("claim")["verdict"].to_dict() == {"dynamic_beats_fixed": "holds", "dynamic_under_100_tokens": "holds"}
    assert result.passed  # numbers are far from the paper, but claim mode judges directions only

    fails = holds.copy()
    fails.loc["Dynamic", "VQAv2"] = 19.0
    result = cmp.compare(ref, fails, mode="claim", profile="mini")
    row = result.claims.set_index("claim").loc["dynamic_beats_fixed"]
    assert row["verdict"] == "fails" and "VQAv2: Dynamic 19 better than Fixed 20: NO" in row["details"]
    assert not result.passed

    partial = holds.drop(columns=["VQAv2"])
    result = cmp.compare(ref, partial, mode="claim", profile="mini")
    assert result.claims.set_index("claim").loc["dynamic_beats_fixed", "verdict"] == "not measured"
    assert not result.passed


def test_lower_is_better_columns_flip_better(ref):
    # For Num, "better" means fewer tokens.
    from reproduce.reference import Check

    check = Check(row="Dynamic", relation="better", columns=("Num",), than_row="Fixed")
    assert cmp.evaluate_check(ref, check, frame({"Fixed": {"Num": 256}, "Dynamic": {"Num": 94}}))[0] == "holds"
    assert cmp.evaluate_check(ref, check, frame({"Fixed": {"Num": 94}, "Dynamic": {"Num": 256}}))[0] == "fails"


def test_measured_frame_must_fit_the_reference(ref):
    with pytest.raises(cmp.MeasuredTableError, match=r"rows \['Dinamic'\]"):
        cmp.compare(ref, frame({"Dinamic": {"Flickr": 1.0}}))
    with pytest.raises(cmp.MeasuredTableError, match=r"columns \['COCO'\]"):
        cmp.compare(ref, frame({"Dynamic": {"COCO": 1.0}}))


def test_written_files_and_check_exit_code(ref, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cmp, "get_reference", lambda key: ref)
    measured = tmp_path / "measured.csv"
    frame({"Fixed": {"Num": 256, "Flickr": 71.0, "VQAv2": 56.0}, "Dynamic": {"Num": 95, "Flickr": 74.0, "VQAv2": 57.0}}).rename_axis(
        "row"
    ).to_csv(measured)
    out = tmp_path / "results"
    assert cmp.main(["lavit_table3b", "--measured", str(measured), "--results-dir", str(out), "--check"]) == 0
    written = pd.read_csv(out / "lavit_table3b.csv")
    assert set(written["kind"]) == {"number", "claim"}
    assert (written["profile"] == "paper").all() and "provenance" not in written.columns  # no timestamps in results
    side = json.loads((out / "provenance" / "lavit_table3b.json").read_text())  # they go to the ignored side file
    assert side["profile"] == "paper" and "git" in json.dumps(side["provenance"])
    md = (out / "lavit_table3b.md").read_text()
    assert "| Dynamic | Flickr | 74.0 | 74 | 0 | 1 | match |" in md

    # A mini-profile run where the claim fails: --check exits 1 and says why.
    frame({"Fixed": {"Num": 256, "Flickr": 10.0, "VQAv2": 20.0}, "Dynamic": {"Num": 95, "Flickr": 9.0, "VQAv2": 21.0}}).rename_axis(
        "row"
    ).to_csv(measured)
    code = cmp.main(["lavit_table3b", "--measured", str(measured), "--results-dir", str(out), "--mode", "claim", "--profile", "mini", "--check"])
    assert code == 1
    assert "CHECK FAILED" in capsys.readouterr().err
    # Without --check the same comparison is written and exits 0.
    assert cmp.main(["lavit_table3b", "--measured", str(measured), "--results-dir", str(out), "--mode", "claim"]) == 0
    assert not math.isnan(pd.read_csv(out / "lavit_table3b.csv")["measured"].dropna().iloc[0])


def test_a_claim_within_the_seed_spread_is_undecided_and_one_beyond_it_is_decided(ref):
    measured = frame({"Fixed": {"Num": 256, "Flickr": 10.0, "VQAv2": 20.0}, "Dynamic": {"Num": 90, "Flickr": 11.0, "VQAv2": 21.0}})
    small = {("Dynamic", "Flickr"): 0.5, ("Fixed", "VQAv2"): 0.2}  # both effects (1.0) are larger: decided
    result = cmp.compare(ref, measured, mode="claim", profile="mini", spreads=small)
    row = result.claims.set_index("claim").loc["dynamic_beats_fixed"]
    assert row["verdict"] == "holds" and "> seed spread 0.5" in row["details"]

    wide = {("Fixed", "Flickr"): 1.5}  # Flickr's +1.0 is inside Fixed's seed spread
    result = cmp.compare(ref, measured, mode="claim", profile="mini", spreads=wide)
    row = result.claims.set_index("claim").loc["dynamic_beats_fixed"]
    assert row["verdict"] == cmp.UNDECIDED and "undecided (difference 1 <= seed spread 1.5)" in row["details"]
    assert result.claims.set_index("claim").loc["dynamic_under_100_tokens", "verdict"] == "holds"  # against a value: no spread
    assert not result.passed  # a gated claim that is undecided is not a pass

    fails = measured.copy()
    fails.loc["Dynamic", "VQAv2"] = 15.0  # a clear failure elsewhere wins over an undecided column
    result = cmp.compare(ref, fails, mode="claim", profile="mini", spreads=wide)
    assert result.claims.set_index("claim").loc["dynamic_beats_fixed", "verdict"] == "fails"
