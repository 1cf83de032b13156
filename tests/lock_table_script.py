"""A tiny table for tests/test_run_locks.py: one LaVIT chain (stage 1a, stage 2; 2 steps each) through the real
launcher, "evaluated" by a digest of its final weights, so that two processes which trained the same run twice or
mixed two trainings' files would write other numbers than one process alone."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce import table as T  # noqa: E402

REFERENCE = """
paper: lavit
table: "0"
title: "run lock test"
source: "test"
defaults: {higher_is_better: true, target: false}
columns:
  Score: {metric: score}
rows:
  - {row: A}
claims: []
"""


def evaluate_row(family, checkpoint, output_dir, ctx, load_options=None):
    weights = sorted(Path(checkpoint).glob("checkpoints/step_*/model.safetensors"))[-1]
    return pd.DataFrame([{"task": "toy_task", "metric": "score", "value": int(hashlib.sha256(weights.read_bytes()).hexdigest()[:6], 16)}])


def main() -> int:
    args = sys.argv[1:]
    results = Path(args[args.index("--results-dir") + 1])
    (results / "mini").mkdir(parents=True, exist_ok=True)
    (results / "mini" / "lavit_table0.yaml").write_text(REFERENCE)
    T.MINI_REFERENCE_DIR = results / "mini"
    T.evaluate_row = evaluate_row
    T.check_data = lambda tasks, root: None
    tokenizer = T.StageRun("tokenizer", overrides=("loop.steps=2", "vq_start_step=1", "kmeans_images=4"))
    unified = T.StageRun("unified", overrides=("loop.steps=2", "loop.checkpoint_every=1"), inputs=(("tokenizer_checkpoint", "tokenizer"),))
    profile = T.Profile(rows={"A": T.Trained("lavit", (tokenizer, unified))}, columns=(T.Column("Score", "toy_task", "score"),),
                        reference="mini/lavit_table0", data="data-root")  # fmt: skip
    spec = T.TableSpec(key="lavit_table1", script="tests/lock_table_script.py", profiles={"mini": profile})
    return T.main(spec, args)


if __name__ == "__main__":
    sys.exit(main())
