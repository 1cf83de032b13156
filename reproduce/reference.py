"""The papers' reference numbers: one YAML file per paper table in `results/reference/`.

File format (`results/reference/<paper>_table<N>.yaml`, e.g. `lavit_table3b.yaml`; numbers stated outside tables go in `<paper>_prose.yaml` and the LaVIT release numbers in `lavit_released.yaml`), written row by row as the paper prints it:

    paper: lavit                         # lavit | vila
    table: "3b"                          # the table's own number ("prose", "released" for non-table numbers)
    title: "Ablations for the effect of different tokenization strategies"
    source: "LaVIT (ICLR 2024), Table 3b"   # prefix of every number's source
    defaults:                             # apply to every column unless the column says otherwise
      metric: CIDEr
      higher_is_better: true
    columns:                              # every column as printed, in order
      Num:    {metric: mean visual tokens per image, higher_is_better: false, tolerance: 5}
      Time:   {metric: pre-training hours on 256 A100, higher_is_better: false, target: false}
      Flickr: {metric: CIDEr}
    rows:                                 # every row as printed, in order
      - {row: Fixed, Num: 256, Time: "30h", Flickr: 71.1}
      - row: Dynamic
        Num: 94
        Time: {printed: "18h", value: 18}
        Flickr: 74.0
      - {row: "Flamingo-9B", target: false, Flickr: 61.5}   # a baseline: reported, not reproduced
    claims:                               # directions the paper states, checked at small scale
      - id: dynamic_beats_fixed
        statement: "the dynamic visual tokenizer achieves superior performance while only requiring 94 tokens"
        where: "§4.3"
        checks:
          - {row: Dynamic, than: Fixed, columns: [Flickr, VQAv2, OKVQA], is: better}
          - {row: Dynamic, than: Fixed, columns: [Num], is: lower}

Cells: a number; a string as printed ("46.0%" and "28.8% (−17.2%)" give 46.0 and 28.8 -- the leading
number; "–", "-", "✗", "30h" carry no number unless written as a mapping {printed, value}); or a
mapping {printed: ..., value: ..., note: ...}. Missing columns in a row mean an empty cell.

Row or column keys `target` (default true) and `tolerance` decide whether a number is a reproduction
target and how close a paper-scale run must come. Default tolerances, by metric, are in
`DEFAULT_TOLERANCE` with the reasoning next to them.

`checks[].is` is one of: better / worse (by the column's `higher_is_better`), higher / lower,
higher_or_equal / lower_or_equal. `than` is a row label or {value: number}. Optional `margin`, in the
column's units: "higher" means a > b + margin, so a positive margin demands a clear gap and a negative one
states an approximate claim ("on par", "a small gap": a > b - |margin|). Claims may carry a `note`, and
`gate: false` (default true): the claim is reported (holds / fails, with both numbers) but a failing verdict
does not fail `--check` -- for a paper's claim restated at mini scale, where it may honestly not hold (a
"not measured" verdict still fails: the pipeline did not produce the numbers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.errors import InputError

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference"

PAPERS = {
    "lavit": "LaVIT (ICLR 2024)",
    "vila": "VILA (CVPR 2024)",
}

# Default absolute tolerance a paper-scale reproduction must meet, by metric. The papers print one
# decimal. Re-running a released checkpoint moves these metrics by a few tenths: bf16 vs fp32
# inference, batch padding in beam search, and the VQA answer-normalisation variant each shift VQA
# accuracy and CIDEr by up to ~0.5 (the LaVIT authors' own re-release moved COCO CIDEr 134.0 -> 134.6
# and Flickr 83.0 -> 83.2). One point on a 0-100 scale is the smallest band that separates "same
# model, same protocol" from "different result". FID is on 30k samples with sampling noise of a few
# tenths at this scale (the released model: 7.4 in the paper, 7.2 / 7.1 re-measured), hence 0.5.
DEFAULT_TOLERANCE = {
    "CIDEr": 1.0,
    "VQA accuracy": 1.0,
    "accuracy": 1.0,
    "MMLU accuracy": 1.0,
    "FID": 0.5,
}

VALID_RELATIONS = {"better", "worse", "higher", "lower", "higher_or_equal", "lower_or_equal"}

_NUMBER = re.compile(r"^\s*([+\-−]?\d+(?:\.\d+)?(?:[eE][+\-−]?\d+)?)\s*%?")
_NO_NUMBER = {"", "-", "–", "—", "✗", "✓", "n/a"}


class ReferenceError(InputError):
    """A reference file that does not follow the format above."""


@dataclass(frozen=True)
class Check:
    row: str
    relation: str
    columns: tuple[str, ...]
    than_row: str | None = None
    than_value: float | None = None
    margin: float = 0.0


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    where: str
    checks: tuple[Check, ...]
    gate: bool = True  # False: reported (holds / fails) but never fails `--check` (a paper claim at mini scale)


@dataclass
class ReferenceTable:
    paper: str
    table: str
    title: str
    source: str
    path: Path
    columns: list[str]
    rows: list[str]
    cells: pd.DataFrame  # long format, one line per printed cell
    claims: list[Claim] = field(default_factory=list)

    @property
    def key(self) -> str:
        """`lavit_table3b` for a numbered table, `vila_prose` for the others; equals the file name."""
        name = f"table{self.table}" if self.table[:1].isdigit() else self.table
        return f"{self.paper}_{name}"

    def values(self) -> pd.DataFrame:
        """The numbers as a wide frame (rows x columns) in printed order; NaN where no number."""
        wide = self.cells.pivot(index="row", columns="column", values="value")
        return wide.reindex(index=self.rows, columns=self.columns)

    def column_info(self, column: str) -> pd.Series:
        return self.cells[self.cells["column"] == column].iloc[0]


def parse_cell(cell: Any) -> tuple[str, float, str]:
    """Return (printed, value, note) for a cell as written in a reference file."""
    note = ""
    if isinstance(cell, dict):
        unknown = set(cell) - {"printed", "value", "note"}
        if unknown:
            raise ReferenceError(f"cell {cell!r}: unknown keys {sorted(unknown)}")
        printed = str(cell.get("printed", cell.get("value", "")))
        value = cell.get("value")
        note = str(cell.get("note", ""))
        if value is None:
            _, value, _ = parse_cell(printed)
        return printed, float(value), note
    if cell is None:
        return "", math.nan, note
    if isinstance(cell, bool):
        raise ReferenceError(f"cell {cell!r}: booleans are not cells; write the printed mark ('✓'/'✗')")
    if isinstance(cell, (int, float)):
        return _format_number(cell), float(cell), note
    printed = str(cell)
    if printed.strip().lower() in _NO_NUMBER:
        return printed, math.nan, note
    match = _NUMBER.match(printed)
    if match and not re.search(r"[A-Za-z]", printed[match.end():].split("(")[0]):
        return printed, float(match.group(1).replace("−", "-")), note
    return printed, math.nan, note


def _format_number(x: int | float) -> str:
    return str(x)


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ReferenceError(f"{where}: expected true/false, got {value!r}")


def _parse_claims(raw: list[dict], columns: list[str], rows: list[str], path: Path) -> list[Claim]:
    claims = []
    for item in raw or []:
        unknown = set(item) - {"id", "statement", "where", "checks", "note", "gate"}
        if unknown:
            raise ReferenceError(f"{path}: claim {item.get('id', '?')!r} has unknown keys {sorted(unknown)}")
        for key in ("id", "statement", "checks"):
            if key not in item:
                raise ReferenceError(f"{path}: claim {item.get('id', '?')!r} lacks {key!r}")
        checks = []
        for check in item["checks"]:
            where = f"{path}: claim {item['id']!r}"
            unknown = set(check) - {"row", "than", "columns", "is", "margin"}
            if unknown:
                raise ReferenceError(f"{where}: a check has unknown keys {sorted(unknown)}")
            relation = check.get("is")
            if relation not in VALID_RELATIONS:
                raise ReferenceError(f"{where}: 'is' must be one of {sorted(VALID_RELATIONS)}, got {relation!r}")
            if check.get("row") not in rows:
                raise ReferenceError(f"{where}: row {check.get('row')!r} is not a row of the table ({rows})")
            than = check.get("than")
            than_row, than_value = None, None
            if isinstance(than, dict) and "value" in than:
                than_value = float(than["value"])
            elif than in rows:
                than_row = than
            else:
                raise ReferenceError(f"{where}: 'than' must be a row of the table or {{value: x}}, got {than!r}")
            cols = check.get("columns") or []
            for col in cols:
                if col not in columns:
                    raise ReferenceError(f"{where}: column {col!r} is not a column of the table ({columns})")
            if not cols:
                raise ReferenceError(f"{where}: a check needs 'columns'")
            checks.append(
                Check(
                    row=check["row"],
                    relation=relation,
                    columns=tuple(cols),
                    than_row=than_row,
                    than_value=than_value,
                    margin=float(check.get("margin", 0.0)),
                )
            )
        gate = item.get("gate", True)
        if not isinstance(gate, bool):
            raise ReferenceError(f"{path}: claim {item['id']!r}: 'gate' must be true or false, got {gate!r}")
        claims.append(Claim(id=item["id"], statement=item["statement"], where=item.get("where", ""), checks=tuple(checks), gate=gate))
    return claims


def load_reference(path: str | Path) -> ReferenceTable:
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"reference file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ReferenceError(f"{path}: not valid YAML: {err}") from err
    for key in ("paper", "table", "title", "source", "columns", "rows"):
        if key not in data:
            raise ReferenceError(f"{path}: missing top-level key {key!r}")
    if data["paper"] not in PAPERS:
        raise ReferenceError(f"{path}: paper must be one of {sorted(PAPERS)}, got {data['paper']!r}")
    defaults = data.get("defaults") or {}
    columns_spec: dict[str, dict] = {str(k): (v or {}) for k, v in data["columns"].items()}
    columns = list(columns_spec)
    rows: list[str] = []
    records = []
    for raw_row in data["rows"]:
        if "row" not in raw_row:
            raise ReferenceError(f"{path}: a row lacks its 'row' label: {raw_row!r}")
        label = str(raw_row["row"])
        if label in rows:
            raise ReferenceError(f"{path}: row {label!r} appears twice")
        rows.append(label)
        row_target = raw_row.get("target", True)
        row_tol = raw_row.get("tolerance")
        row_note = str(raw_row.get("note", ""))
        extra = set(raw_row) - set(columns) - {"row", "target", "tolerance", "note"}
        if extra:
            raise ReferenceError(f"{path}: row {label!r} has cells for unknown columns {sorted(extra)}; columns are {columns}")
        for column in columns:
            spec = {**defaults, **columns_spec[column]}
            unknown = set(spec) - {"metric", "higher_is_better", "tolerance", "target", "note"}
            if unknown:
                raise ReferenceError(f"{path}: column {column!r} has unknown keys {sorted(unknown)}")
            printed, value, cell_note = parse_cell(raw_row.get(column))
            metric = spec.get("metric", "")
            if not metric:
                raise ReferenceError(f"{path}: column {column!r} has no metric (set it in the column or in defaults)")
            target = _as_bool(row_target, f"{path}: row {label!r} target") and _as_bool(
                spec.get("target", True), f"{path}: column {column!r} target"
            )
            tolerance = row_tol if row_tol is not None else spec.get("tolerance", DEFAULT_TOLERANCE.get(metric))
            hib = spec.get("higher_is_better")
            records.append(
                {
                    "paper": data["paper"],
                    "table": str(data["table"]),
                    "row": label,
                    "column": column,
                    "printed": printed,
                    "value": value,
                    "metric": metric,
                    "higher_is_better": hib,
                    "target": bool(target and not math.isnan(value)),
                    "tolerance": float(tolerance) if tolerance is not None else math.nan,
                    "source": f"{data['source']}, row '{label}', column '{column}'",
                    "note": "; ".join(n for n in (row_note, cell_note, str(spec.get("note", ""))) if n),
                }
            )
    cells = pd.DataFrame.from_records(records)
    bad = cells[cells["target"] & cells["tolerance"].isna()]
    if len(bad):
        first = bad.iloc[0]
        raise ReferenceError(
            f"{path}: target number at row {first['row']!r}, column {first['column']!r} has no tolerance "
            f"(metric {first['metric']!r} has no default; give 'tolerance' or 'target: false')"
        )
    claims = _parse_claims(data.get("claims") or [], columns, rows, path)
    return ReferenceTable(
        paper=data["paper"],
        table=str(data["table"]),
        title=str(data["title"]),
        source=str(data["source"]),
        path=path,
        columns=columns,
        rows=rows,
        cells=cells,
        claims=claims,
    )


def reference_paths(directory: str | Path = REFERENCE_DIR) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"), key=_table_sort_key)


def _table_sort_key(path: Path) -> tuple:
    paper, _, table = path.stem.partition("_")
    match = re.match(r"table(\d+)(.*)", table)
    return (paper, 0, int(match.group(1)), match.group(2)) if match else (paper, 1, 0, table)


@lru_cache(maxsize=None)
def _load_cached(path: str, mtime: float) -> ReferenceTable:
    return load_reference(path)


def get_reference(key: str, directory: str | Path = REFERENCE_DIR) -> ReferenceTable:
    """`get_reference("lavit_table3b")` -> the table from `results/reference/lavit_table3b.yaml`."""
    path = Path(directory) / f"{key}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in reference_paths(directory))
        raise ReferenceError(f"no reference table {key!r} ({path}); known: {known}")
    return _load_cached(str(path), path.stat().st_mtime)


def load_all(directory: str | Path = REFERENCE_DIR) -> list[ReferenceTable]:
    return [get_reference(p.stem, directory) for p in reference_paths(directory)]
