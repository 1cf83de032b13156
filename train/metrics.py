"""Per-step metrics: JSONL (one object per optimizer step), a tqdm bar with tokens/s, optional TensorBoard.

Only rank 0 writes. On resume the JSONL file is cut back to the resumed step, so `metrics.jsonl` always holds
exactly one line per completed step, as if the run had never been interrupted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.io import atomic_write_text


class Throughput:
    """Tokens (or samples) per second over the steps since the last call."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def rate(self, amount: float) -> tuple[float, float]:
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        self._t0 = now
        return amount / elapsed, elapsed


class _LineWriter:
    """tqdm's output as whole lines (tqdm redraws with '\r', which a log file shows as one endless line)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class MetricsLogger:
    def __init__(
        self,
        directory: str | Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool = True,
        tensorboard: bool = False,
        unit: str = "tok",
    ):
        self.enabled = enabled
        self.path = Path(directory) / "metrics.jsonl"
        self.unit = unit
        self._bar = None
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_to(start_step)
        self._file = open(self.path, "a", buffering=1)
        if progress:
            import sys

            from tqdm import tqdm

            # A terminal gets a live bar; a log file (CI, SLURM, a table run's subprocess) a line every 15 s.
            interactive = sys.stderr.isatty()
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=f"train {Path(directory).name}",
                unit="step",
                dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 15.0,
                ncols=None if interactive else 120,
                file=sys.stderr if interactive else _LineWriter(sys.stdout),
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is optional
                raise RuntimeError("tensorboard=true but the tensorboard package is not installed (pip install tensorboard)") from err
            self._tb = SummaryWriter(log_dir=str(Path(directory) / "tensorboard"), purge_step=start_step + 1)

    def _truncate_to(self, step: int) -> None:
        """Drop lines of steps after `step` (written before a crash, redone after the resume)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                break  # a line cut by the crash: everything from here on is dropped
        atomic_write_text(self.path, "".join(l + "\n" for l in kept))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None:
            shown = {k: values[k] for k in ("loss", "lr") if k in values}
            rate = values.get(f"{self.unit}_per_s")
            postfix = {k: f"{v:.4g}" for k, v in shown.items()}
            if rate is not None:
                postfix[f"{self.unit}/s"] = f"{rate:,.0f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
