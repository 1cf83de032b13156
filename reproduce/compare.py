"""Compare a measured result table with the paper's reference numbers and claims.

Two kinds of verdict:

* **numeric** (paper-scale profiles): every reference number that is a reproduction target must be
  matched within its tolerance. Verdicts per cell: `match`, `mismatch`, `not measured`, and
  `reference only` (baselines from other papers, settings, numbers that are not targets).
* **claim** (small-scale profiles, where absolute numbers are not comparable): the directions the paper
  states ("Dynamic uses fewer tokens than Fixed and scores higher on all three columns") must hold on the
  measured numbers. Verdicts per claim: `holds`, `fails`, `not measured`. A claim with `gate: false` (a paper's
  claim restated at small scale) is reported but its `fails` does not fail `--check`; `not measured` always does.

At small scale, what does gate CI is a **regression band** (`make_band` / `compare_band`): the cells of a previous
run of the same profile, each with a tolerance, stored apart from the paper references (`results/mini/<table>.band.json`)
and labelled as such; a cell outside its band, or not produced, fails `--check`.

A measured table is a `pandas.DataFrame` indexed by the reference table's row labels with its column
labels (any subset of both). Outputs: `results/<paper>_table<N>.csv` (one line per cell and one per
claim) and a markdown twin; `--check` turns failures into a non-zero exit.

    python -m reproduce.compare lavit_table3b --measured measured.csv --mode claim --check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from harness.errors import InputError

from reproduce.reference import Check, ReferenceTable, get_reference

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"

Mode = Literal["numeric", "claim"]

NUMBER_VERDICTS = ("match", "mismatch", "not measured", "reference only", "measured only", "needs a judge")
# A target whose metric is GPT-4's judgment (VILA Table 5's LLaVA-Bench, MM-Vet: `eval/judge.py`) cannot be measured
# offline: not measured, it reads "needs a judge" (no number is invented) and does not fail --check.
NEEDS_JUDGE = "needs a judge"
UNDECIDED = "undecided (within seed spread)"
CLAIM_VERDICTS = ("holds", "fails", UNDECIDED, "not measured")
# Seed spreads of the measured cells: (row, column) -> max - min over the row's training seeds (rows with seeds only).
Spreads = dict[tuple[str, str], float]


class MeasuredTableError(InputError):
    """A measured frame that does not fit its reference table."""


@dataclass
class Comparison:
    reference: ReferenceTable
    mode: Mode
    profile: str
    numbers: pd.DataFrame  # row, column, metric, reference, measured, delta, tolerance, target, verdict
    claims: pd.DataFrame  # claim, statement, where, verdict, details

    @property
    def failures(self) -> pd.DataFrame:
        """What makes `--check` fail: numeric mismatches or unmeasured targets, or unmeasured claims and failing
        claims that gate (`gate: false` claims are reported, not gated)."""
        if self.mode == "numeric":
            return self.numbers[self.numbers["verdict"].isin(["mismatch", "not measured"])]
        claims = self.claims
        return claims[(claims["verdict"] == "not measured") | (claims["verdict"].isin(["fails", UNDECIDED]) & claims["gate"].astype(bool))]

    @property
    def passed(self) -> bool:
        return self.failures.empty

    def summary(self) -> str:
        n = self.numbers
        targets = n[n["target"]]
        matched = int((targets["verdict"] == "match").sum())
        measured = int(targets["measured"].notna().sum())
        holds = int((self.claims["verdict"] == "holds").sum())
        reported = int((~self.claims["gate"].astype(bool)).sum()) if len(self.claims) else 0
        note = f" ({reported} reported, not gated)" if reported else ""
        return (
            f"{self.reference.key} [{self.profile}, {self.mode}]: numbers {matched}/{len(targets)} match "
            f"({measured} measured); claims {holds}/{len(self.claims)} hold{note}"
        )


def _validate_measured(ref: ReferenceTable, measured: pd.DataFrame) -> pd.DataFrame:
    measured = measured.copy()
    if measured.empty:
        return pd.DataFrame(dtype=float)
    measured.index = measured.index.map(str)
    measured.columns = measured.columns.map(str)
    unknown_rows = [r for r in measured.index if r not in ref.rows]
    if unknown_rows:
        raise MeasuredTableError(f"{ref.key}: measured rows {unknown_rows} are not rows of the reference table {ref.rows}")
    unknown_cols = [c for c in measured.columns if c not in ref.columns]
    if unknown_cols:
        raise MeasuredTableError(
            f"{ref.key}: measured columns {unknown_cols} are not columns of the reference table {ref.columns}"
        )
    if measured.index.has_duplicates:
        raise MeasuredTableError(f"{ref.key}: measured rows appear twice: {sorted(set(measured.index[measured.index.duplicated()]))}")
    try:
        return measured.apply(pd.to_numeric).astype(float)
    except (ValueError, TypeError) as err:
        raise MeasuredTableError(f"{ref.key}: measured values must be numbers: {err}") from err


def _measured_value(measured: pd.DataFrame, row: str, column: str) -> float:
    if row in measured.index and column in measured.columns:
        return float(measured.at[row, column])
    return math.nan


def compare_numbers(ref: ReferenceTable, measured: pd.DataFrame) -> pd.DataFrame:
    records = []
    for cell in ref.cells.itertuples(index=False):
        got = _measured_value(measured, cell.row, cell.column)
        delta = got - cell.value if not (math.isnan(got) or math.isnan(cell.value)) else math.nan
        if cell.target:
            if math.isnan(got):
                verdict = NEEDS_JUDGE if str(cell.metric).startswith("GPT-4") else "not measured"
            else:
                verdict = "match" if abs(delta) <= cell.tolerance + 1e-9 else "mismatch"
        else:
            verdict = "reference only" if math.isnan(got) else "measured only"
        records.append(
            {
                "row": cell.row,
                "column": cell.column,
                "metric": cell.metric,
                "printed": cell.printed,
                "reference": cell.value,
                "measured": got,
                "delta": delta,
                "tolerance": cell.tolerance,
                "target": cell.target,
                "verdict": verdict,
                "source": cell.source,
            }
        )
    return pd.DataFrame.from_records(records)


def _relation_holds(relation: str, a: float, b: float, higher_is_better: bool | None, margin: float) -> bool:
    if relation in ("better", "worse"):
        if higher_is_better is None:
            raise MeasuredTableError(f"'{relation}' needs a column with higher_is_better set")
        higher = higher_is_better if relation == "better" else not higher_is_better
        relation = "higher" if higher else "lower"
    if relation == "higher":
        return a > b + margin
    if relation == "lower":
        return a < b - margin
    if relation == "higher_or_equal":
        return a >= b + margin
    if relation == "lower_or_equal":
        return a <= b - margin
    raise MeasuredTableError(f"unknown relation {relation!r}")


def evaluate_check(ref: ReferenceTable, check: Check, values: pd.DataFrame, spreads: Spreads | None = None) -> tuple[str, list[str]]:
    """Return (verdict, one line of detail per column) for one check on a wide frame of values. A row-against-row
    check whose difference is no larger than either row's seed spread (`spreads`) is undecided, whichever way it
    points: the effect is within the seed-to-seed variation."""
    verdicts, details = [], []
    for column in check.columns:
        a = _measured_value(values, check.row, column)
        b = check.than_value if check.than_row is None else _measured_value(values, check.than_row, column)
        than = f"{check.than_value:g}" if check.than_row is None else f"{check.than_row} {b:g}"
        if math.isnan(a) or math.isnan(b):
            verdicts.append("not measured")
            details.append(f"{column}: {check.row} vs {check.than_row or check.than_value}: not measured")
            continue
        info = ref.column_info(column)
        hib = info["higher_is_better"]
        hib = None if hib is None or (isinstance(hib, float) and math.isnan(hib)) else bool(hib)
        ok = _relation_holds(check.relation, a, b, hib, check.margin)
        spread = max((spreads or {}).get((r, column), 0.0) for r in (check.row, check.than_row))
        if check.than_row is not None and spread > 0 and abs(a - b) <= spread:
            verdicts.append(UNDECIDED)
            details.append(f"{column}: {check.row} {a:g} {check.relation} than {than}: undecided "
                           f"(difference {abs(a - b):.3g} <= seed spread {spread:.3g})")  # fmt: skip
            continue
        verdicts.append("holds" if ok else "fails")
        details.append(f"{column}: {check.row} {a:g} {check.relation} than {than}: {'yes' if ok else 'NO'}"
                       + (f" (difference {abs(a - b):.3g} > seed spread {spread:.3g})" if spread > 0 and check.than_row else ""))
    if "fails" in verdicts:
        return "fails", details
    if UNDECIDED in verdicts:
        return UNDECIDED, details
    if "not measured" in verdicts:
        return "not measured", details
    return "holds", details


def evaluate_claims(ref: ReferenceTable, values: pd.DataFrame, spreads: Spreads | None = None) -> pd.DataFrame:
    records = []
    for claim in ref.claims:
        verdicts, details = [], []
        for check in claim.checks:
            verdict, lines = evaluate_check(ref, check, values, spreads)
            verdicts.append(verdict)
            details.extend(lines)
        overall = next((v for v in ("fails", "not measured", UNDECIDED) if v in verdicts), "holds")
        records.append(
            {"claim": claim.id, "statement": claim.statement, "where": claim.where, "verdict": overall, "details": "; ".join(details),
             "gate": claim.gate}
        )
    return pd.DataFrame.from_records(records, columns=["claim", "statement", "where", "verdict", "details", "gate"])


def compare(ref: ReferenceTable | str, measured: pd.DataFrame, mode: Mode = "numeric", profile: str = "paper",
            spreads: Spreads | None = None) -> Comparison:
    """Build the side-by-side comparison of `measured` against the reference table `ref` (`spreads`: seed spreads
    of cells, which make a claim whose effect is within them undecided)."""
    if isinstance(ref, str):
        ref = get_reference(ref)
    if mode not in ("numeric", "claim"):
        raise ValueError(f"mode must be 'numeric' or 'claim', got {mode!r}")
    measured = _validate_measured(ref, measured)
    return Comparison(
        reference=ref,
        mode=mode,
        profile=profile,
        numbers=compare_numbers(ref, measured),
        claims=evaluate_claims(ref, measured, spreads),
    )


# ---------------------------------------------------------------------------------------------
# Regression bands: a previous run's cells (NOT paper numbers), each with a tolerance. At small scale a paper's
# claim may honestly fail, so it cannot gate CI; what can is "the pipeline still produces what it produced",
# within a band wide enough for run-to-run noise.

BAND_VERDICTS = ("inside", "outside", "not measured", "not in band")
BAND_NOTE = (
    "Regression band of a previous run of this profile: its measured cells, each with an absolute tolerance. "
    "NOT the paper's numbers (those are in results/reference/) and no claim about the paper; `--check` fails when "
    "a cell leaves its band. Rewritten by the table script's --update-band."
)


@dataclass(frozen=True)
class BandRule:
    """A cell's tolerance: max(floor, relative * |value|), in the column's units."""

    relative: float = 0.1
    floor: float = 1.0

    def tolerance(self, value: float) -> float:
        return max(self.floor, self.relative * abs(value))


def make_band(measured: pd.DataFrame, key: str, profile: str, rules: dict[str, BandRule] | None = None) -> dict:
    """The band file's content for a measured frame (rows x columns): every measured cell with its tolerance."""
    rules = rules or {}
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for row in measured.index:
        for column in measured.columns:
            value = float(measured.at[row, column])
            if math.isnan(value):
                continue
            rule = rules.get(str(column), BandRule())
            cells.setdefault(str(row), {})[str(column)] = {"value": round(value, 6), "tolerance": round(rule.tolerance(value), 6)}
    rule_text = {c: {"relative": r.relative, "floor": r.floor} for c, r in sorted(rules.items())}
    return {"note": BAND_NOTE, "table": key, "profile": profile, "rules": {"default": {"relative": BandRule().relative, "floor": BandRule().floor}, **rule_text}, "cells": cells}


def read_band(path: str | Path) -> dict:
    """A band file (see `make_band`); a missing or malformed one is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"regression band {path} not found: run the table script once with --update-band (and commit the file)")
    try:
        band = json.loads(path.read_text())
        cells = band["cells"]
        for row, columns in cells.items():
            for column, cell in columns.items():
                float(cell["value"]), float(cell["tolerance"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"regression band {path}: malformed ({err}); rewrite it with --update-band") from err
    return band


def compare_band(band: dict, measured: pd.DataFrame) -> pd.DataFrame:
    """One line per cell of the band and per measured cell: row, column, band, tolerance, measured, verdict
    (inside / outside / not measured: in the band but not produced / not in band: measured, never banded)."""
    records = []
    for row, columns in band["cells"].items():
        for column, cell in columns.items():
            got = _measured_value(measured, row, column)
            value, tolerance = float(cell["value"]), float(cell["tolerance"])
            if math.isnan(got):
                verdict = "not measured"
            else:
                verdict = "inside" if abs(got - value) <= tolerance + 1e-9 else "outside"
            records.append({"row": row, "column": column, "band": value, "tolerance": tolerance, "measured": got, "verdict": verdict})
    for row in measured.index:
        for column in measured.columns:
            got = float(measured.at[row, column])
            if not math.isnan(got) and column not in band["cells"].get(str(row), {}):
                records.append({"row": str(row), "column": str(column), "band": math.nan, "tolerance": math.nan, "measured": got, "verdict": "not in band"})
    return pd.DataFrame.from_records(records, columns=["row", "column", "band", "tolerance", "measured", "verdict"])


@dataclass
class BandResult:
    check: pd.DataFrame | None  # compare_band's frame; None when there is no band file (and none was written)
    section: str  # the markdown section for the result file ("" without a band)

    @property
    def inside(self) -> int:
        return 0 if self.check is None else int((self.check["verdict"] == "inside").sum())

    @property
    def outside(self) -> pd.DataFrame | None:
        """The cells that fail the band (outside it, not measured, not banded), or None when all are inside."""
        if self.check is None:
            return None
        bad = self.check[self.check["verdict"] != "inside"]
        return None if bad.empty else bad


def regression_band(path: Path, measured: pd.DataFrame, key: str, profile: str, rules: dict[str, BandRule] | None = None,
                    *, update: bool = False, shown_as: str = "", leave_out: tuple[str, ...] = ()) -> BandResult:
    """The whole band step of a claim profile: (re)write the band from `measured` with `update`, then compare
    `measured` with the band file when there is one. `leave_out` columns (machine-dependent ones) have no band."""
    measured = measured.drop(columns=list(leave_out), errors="ignore")
    if update:
        from harness.io import atomic_write_json

        atomic_write_json(path, make_band(measured, key, profile, rules))
        print(f"wrote the regression band {path}")
    if not Path(path).is_file():
        return BandResult(None, "")
    band = read_band(path)
    band = {**band, "cells": {row: {c: v for c, v in cells.items() if c not in leave_out} for row, cells in band["cells"].items()}}
    check = compare_band(band, measured)
    return BandResult(check, "\n" + band_markdown(check, shown_as or str(path)))


def band_markdown(band_check: pd.DataFrame, path: str) -> str:
    lines = [f"## Regression band (`{path}`: a previous mini run, not the paper)", "",
             "| row | column | band | tolerance | measured | verdict |", "|---|---|---|---|---|---|"]
    for b in band_check.itertuples(index=False):
        lines.append(f"| {b.row} | {b.column} | {_fmt(b.band)} | {_fmt(b.tolerance)} | {_fmt(b.measured)} | {b.verdict} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:g}"


def to_markdown(result: Comparison) -> str:
    ref = result.reference
    lines = [
        f"# {ref.source}: {ref.title}",
        "",
        f"Profile `{result.profile}`, verdict mode `{result.mode}`. {result.summary()}.",
        "",
    ]
    if len(result.claims):
        lines += ["## Claims", "", "| claim | verdict | statement | details |", "|---|---|---|---|"]
        for c in result.claims.itertuples(index=False):
            gate = "" if c.gate else " (reported, not gated)"
            lines.append(f"| {c.claim} | **{c.verdict}**{gate} | {c.statement} ({c.where}) | {c.details} |")
        lines.append("")
    lines += ["## Numbers", "", "| row | column | reference | measured | delta | tolerance | verdict |", "|---|---|---|---|---|---|---|"]
    for n in result.numbers.itertuples(index=False):
        if n.verdict == "reference only" and not n.printed:
            continue
        lines.append(
            f"| {n.row} | {n.column} | {n.printed} | {_fmt(n.measured)} | {_fmt(n.delta)} | {_fmt(n.tolerance)} | {n.verdict} |"
        )
    return "\n".join(lines) + "\n"


def comparison_frame(result: Comparison) -> pd.DataFrame:
    """Cells and claims in one long frame (kind = number | claim). No timestamp: a rerun with the same numbers
    writes the same bytes; when and with which versions a table was made goes to `results/provenance/`."""
    meta = {"profile": result.profile, "mode": result.mode}
    numbers = result.numbers.assign(kind="number", claim="", statement="", details="")
    claims = result.claims.rename(columns={"where": "source"}).assign(kind="claim")
    return pd.concat([numbers, claims], ignore_index=True).assign(**meta)


def write_comparison(result: Comparison, results_dir: str | Path = RESULTS_DIR, extra_markdown: str = "",
                     side_files: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write `results/<paper>_table<N>.csv` (cells and claims, long format), its markdown twin, and the run's
    provenance to `results/provenance/<key>.json` (ignored by git)."""
    from reproduce.result_files import write_result_files

    return write_result_files(results_dir, result.reference.key, comparison_frame(result), to_markdown(result) + extra_markdown,
                              extra={"profile": result.profile}, side_files=side_files)  # fmt: skip


def read_measured(path: str | Path) -> pd.DataFrame:
    """Read a measured table (CSV with a `row` column, one column per reference column)."""
    path = Path(path)
    if not path.is_file():
        raise MeasuredTableError(f"measured table not found: {path}")
    frame = pd.read_csv(path)
    if "row" not in frame.columns:
        raise MeasuredTableError(f"{path}: needs a 'row' column with the reference table's row labels")
    return frame.set_index("row")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="reference table key, e.g. lavit_table3b")
    parser.add_argument("--measured", required=True, help="CSV with a 'row' column and the table's columns")
    parser.add_argument("--mode", choices=["numeric", "claim"], default="numeric")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--check", action="store_true", help="exit 1 when a target number or claim fails")
    args = parser.parse_args(argv)
    result = compare(args.table, read_measured(args.measured), mode=args.mode, profile=args.profile)
    csv_path, md_path = write_comparison(result, args.results_dir)
    print(result.summary())
    print(f"wrote {csv_path} and {md_path}")
    if args.check and not result.passed:
        print(f"CHECK FAILED: {len(result.failures)} failing entries", file=sys.stderr)
        print(result.failures.to_string(index=False), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
