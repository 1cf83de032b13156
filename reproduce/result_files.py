"""The one writer of result files: `results/<key>.csv`, `results/<key>.md` and what goes beside them.

Committed result files hold only what a rerun of the same code on another machine writes byte for byte (CI checks
this with `git diff --exit-code results/`). Everything else goes under `results/provenance/` (ignored by git):
- `<key>.json`: when and with which code and library versions the files were written, plus the caller's extras
  (wall time, the measured frame);
- `<key>.machine.csv`: machine-dependent cells (wall times, milliseconds per pair), which the committed files show
  as "machine-dependent" and which the console still prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from harness.io import atomic_write_json, atomic_write_text, provenance

PROVENANCE = "provenance"  # results/provenance/: ignored by git


def write_result_files(
    results_dir: str | Path,
    key: str,
    frame: pd.DataFrame,
    markdown: str,
    *,
    extra: dict[str, Any] | None = None,
    machine: pd.DataFrame | None = None,
    side_files: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write `<key>.csv` (frame, no index), `<key>.md`, the provenance record, machine-dependent cells and any
    `side_files` (file name -> text, committed beside them: e.g. Table 5's drawn shares). Returns (csv, md)."""
    results_dir = Path(results_dir)
    csv_path = atomic_write_text(results_dir / f"{key}.csv", frame.to_csv(index=False))
    md_path = atomic_write_text(results_dir / f"{key}.md", markdown)
    for name, text in (side_files or {}).items():
        atomic_write_text(results_dir / name, text)
    record = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}), "provenance": provenance()}
    atomic_write_json(results_dir / PROVENANCE / f"{key}.json", json.loads(json.dumps(record, default=str)))
    machine_path = results_dir / PROVENANCE / f"{key}.machine.csv"
    if machine is not None and not machine.empty:
        atomic_write_text(machine_path, machine.to_csv(index=False))
    return csv_path, md_path


def machine_cells_path(results_dir: str | Path, key: str) -> Path:
    return Path(results_dir) / PROVENANCE / f"{key}.machine.csv"
