"""The papers' reference numbers: every file parses, every number has a source, every claim holds on
the paper's own numbers (a transcription check), and the format's errors are caught."""

from __future__ import annotations

import math

import pytest

from reproduce.compare import evaluate_claims
from reproduce.reference import REFERENCE_DIR, ReferenceError, load_reference, parse_cell, reference_paths

LAVIT_TABLES = ["1", "2", "3a", "3b", "4", "5", "6", "7a", "7b", "8", "9"]
VILA_TABLES = [str(n) for n in range(1, 12)]
EXPECTED = [f"lavit_table{t}" for t in LAVIT_TABLES] + [f"vila_table{t}" for t in VILA_TABLES] + [
    "lavit_prose",
    "lavit_released",
    "vila_prose",
]

ALL_FILES = reference_paths(REFERENCE_DIR)


def test_every_paper_table_has_a_reference_file():
    present = {p.stem for p in ALL_FILES}
    missing = [key for key in EXPECTED if key not in present]
    assert not missing, f"reference files missing: {missing}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.stem)
def test_reference_file_parses_and_every_number_has_a_source(path):
    ref = load_reference(path)
    assert ref.key == path.stem, f"{path}: paper/table keys {ref.key!r} do not match the file name"
    assert ref.rows and ref.columns
    numbers = ref.cells[ref.cells["value"].notna()]
    assert (numbers["source"].str.len() > 0).all()
    for cell in numbers.itertuples():
        assert cell.row in cell.source and cell.column in cell.source, cell.source
        assert cell.metric, f"{path}: {cell.row}/{cell.column} has no metric"
        if cell.target:
            assert not math.isnan(cell.tolerance) and cell.tolerance >= 0


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.stem)
def test_claims_hold_on_the_papers_own_numbers(path):
    """A claim written as data must be true of the numbers the paper prints: catches transcription slips."""
    ref = load_reference(path)
    verdicts = evaluate_claims(ref, ref.values())
    wrong = verdicts[verdicts["verdict"] != "holds"]
    assert wrong.empty, wrong[["claim", "verdict", "details"]].to_string()


def test_spot_values():
    """A few numbers checked by hand against the papers."""
    lavit1 = load_reference(REFERENCE_DIR / "lavit_table1.yaml").values()
    ours = [r for r in lavit1.index if r.startswith("Ours")][0]
    assert lavit1.loc[ours].dropna().tolist() == [114.2, 83.0, 66.0, 54.6, 46.8, 38.5]
    t3b = load_reference(REFERENCE_DIR / "lavit_table3b.yaml").values()
    assert t3b.loc["Dynamic", "Num"] == 94 and t3b.loc["Fixed", "Flickr"] == 71.1


def test_parse_cell():
    assert parse_cell(46.0) == ("46.0", 46.0, "")
    assert parse_cell("28.8% (−17.2%)")[1] == 28.8
    assert parse_cell("27.1(−8.0)")[1] == 27.1
    assert math.isnan(parse_cell("–")[1]) and math.isnan(parse_cell("✗")[1])
    assert math.isnan(parse_cell("30h")[1])
    assert parse_cell({"printed": "30h", "value": 30}) == ("30h", 30.0, "")
    with pytest.raises(ReferenceError, match="unknown keys"):
        parse_cell({"printed": "1", "valu": 1})


BASE = """
paper: lavit
table: "99"
title: test
source: "LaVIT (ICLR 2024), Table 99"
defaults: {metric: CIDEr, higher_is_better: true}
columns:
  Flickr: {}
rows:
  - {row: A, Flickr: 1.0}
"""


def _write(tmp_path, text):
    path = tmp_path / "lavit_table99.yaml"
    path.write_text(text)
    return path


def test_format_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ReferenceError, match="unknown columns \\['Flick'\\]"):
        load_reference(_write(tmp_path, BASE.replace("{row: A, Flickr: 1.0}", "{row: A, Flick: 1.0}")))
    with pytest.raises(ReferenceError, match="missing top-level key 'source'"):
        load_reference(_write(tmp_path, BASE.replace('source: "LaVIT (ICLR 2024), Table 99"', "")))
    with pytest.raises(ReferenceError, match="has no tolerance"):
        load_reference(_write(tmp_path, BASE.replace("metric: CIDEr", "metric: tokens")))
    with pytest.raises(ReferenceError, match="row 'A' appears twice"):
        load_reference(_write(tmp_path, BASE + "  - {row: A, Flickr: 2.0}\n"))
    claim = BASE + "claims:\n  - {id: c, statement: s, checks: [{row: A, than: Z, columns: [Flickr], is: better}]}\n"
    with pytest.raises(ReferenceError, match="'than' must be a row"):
        load_reference(_write(tmp_path, claim))
    with pytest.raises(ReferenceError, match="not found"):
        load_reference(tmp_path / "absent.yaml")
