"""The status report lists every paper table, and REPRODUCE.md carries the same table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reproduce import compare as cmp
from reproduce.reference import REFERENCE_DIR, get_reference
from reproduce.report import BEGIN_MARKER, CLAIMS_BEGIN, CLAIMS_END, END_MARKER, claims_frame, main, status_frame, to_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_every_table_is_listed_with_nothing_measured(tmp_path):
    frame = status_frame(REFERENCE_DIR, tmp_path)
    assert len(frame) == len(list(REFERENCE_DIR.glob("*.yaml")))
    assert "lavit_table1" in set(frame["table"]) and "vila_table11" in set(frame["table"])
    assert (frame["last result"] == "nothing measured yet").all()
    assert (frame["numbers"] >= 0).all() and frame["numbers"].sum() > 300


def test_a_written_comparison_shows_up(tmp_path):
    ref = get_reference("lavit_table3b")
    measured = ref.values().loc[["Fixed", "Dynamic"]].dropna(axis=1, how="any")
    cmp.write_comparison(cmp.compare(ref, measured, mode="claim", profile="mini"), tmp_path)
    row = status_frame(REFERENCE_DIR, tmp_path).set_index("table").loc["lavit_table3b"]
    assert row["profile"] == "mini"
    assert row["last result"].startswith("claims ") and " hold" in row["last result"]


def test_cli_writes_markdown(tmp_path, capsys):
    assert main(["--results-dir", str(tmp_path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| lavit_table1 " in out and (tmp_path / "status.md").is_file()


def test_reproduce_md_status_table_is_current():
    """REPRODUCE.md must say what the reference files and results/ say (regenerate with --update)."""
    text = (ROOT / "REPRODUCE.md").read_text()
    assert BEGIN_MARKER in text and END_MARKER in text
    committed = text.split(BEGIN_MARKER, 1)[1].split(END_MARKER, 1)[0].strip()
    assert committed == to_markdown(status_frame()).strip(), (
        "REPRODUCE.md is stale: run `python -m reproduce.report --update REPRODUCE.md`"
    )


def test_reproduce_md_claims_table_is_current_and_lists_every_mini_paper_claim():
    """REPRODUCE.md's "which paper claims reproduce at mini scale" is generated from results/, never typed."""
    text = (ROOT / "REPRODUCE.md").read_text()
    committed = text.split(CLAIMS_BEGIN, 1)[1].split(CLAIMS_END, 1)[0].strip()
    claims = claims_frame()
    assert committed == to_markdown(claims).strip(), "REPRODUCE.md is stale: run `python -m reproduce.report --update REPRODUCE.md`"
    assert {"lavit_table3a", "lavit_table6", "lavit_table8"} <= set(claims["table"])
    # a claim that reads wall-time cells (Table 3b's training time) is "machine-dependent" in the committed files
    assert set(claims["verdict"]) <= {"holds", "fails", "undecided (within seed spread)", "not measured", "machine-dependent"}
