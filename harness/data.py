"""Data-file helpers every reader of training data shares (`train/data.py`'s streams, `model/vila/data.py`'s corpora):
which files a list of glob patterns names, and the seeded order an epoch walks them in."""

from __future__ import annotations

import glob
import random
from pathlib import Path
from typing import Sequence


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
    """Sorted union of glob patterns (or brace-free explicit paths); an empty result is an error naming them."""
    files: set[str] = set()
    for pattern in patterns:
        matches = glob.glob(str(Path(pattern).expanduser()))
        files.update(m for m in matches if Path(m).is_file())
    if not files:
        raise FileNotFoundError(f"no {what} files match {list(patterns)}")
    return sorted(files)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order
