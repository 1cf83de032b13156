"""LaVIT Table 9: the training hyper-parameters, compared with the `paper` presets of the training stages.

The presets in `train/config.py` are what `python -m train STAGE --config paper` runs; this script reads
them (nothing is trained) and compares every hyper-parameter the paper prints with the value the code
would use, exactly (tolerance 0). A preset that drifts from the paper fails `--check`.

    python reproduce/table9.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from harness.config import get_preset
from reproduce.compare import RESULTS_DIR, compare, write_comparison
from reproduce.table import TableSpec, register_table
import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)
from train.config import preset_group

STAGE_COLUMNS = {"unified": "VL Pre-training", "tokenizer": "Tokenizer training"}

# Nothing is trained or evaluated: the table is read from the presets (own main below, no profiles).
TABLE = register_table(TableSpec(key="lavit_table9", script="reproduce/table9.py", profiles={}, default_profile="paper"))


def measured_table() -> pd.DataFrame:
    """One column per stage, one row per Table 9 hyper-parameter, read from the `paper` presets."""
    columns = {}
    for stage, column in STAGE_COLUMNS.items():
        cfg = get_preset(preset_group(stage), "paper")
        tokenizer = cfg.tokenizer if stage == "tokenizer" else cfg.model.tokenizer
        values = {
            "β1": cfg.optim.betas[0],
            "β2": cfg.optim.betas[1],
            "ε": cfg.optim.eps,
            "Global batch size": cfg.loop.global_batch_size,
            "Peak learning rate of Visual Part": cfg.optim.lr,
            "Training Steps": cfg.loop.steps,
            "Warm-up steps": cfg.optim.warmup_steps,
            "Weight decay": cfg.optim.weight_decay,
            "Gradient clipping": cfg.optim.grad_clip,
            "Input image resolution": tokenizer.image_size,
        }
        if stage == "unified":
            values["Peak learning rate of LLM"] = cfg.optim.group_lr["llm"]
            values["Input sequence to LLM"] = cfg.seq_len
        columns[column] = values
    return pd.DataFrame(columns).astype(float)


def settings_table() -> pd.DataFrame:
    """The printed non-numeric settings next to the presets' values (shown, and checked by the tests)."""
    rows = []
    for stage, column in STAGE_COLUMNS.items():
        cfg = get_preset(preset_group(stage), "paper")
        rows += [
            {"setting": "Learning rate schedule", "stage": column, "preset": cfg.optim.schedule},
            {"setting": "Numerical precision", "stage": column, "preset": cfg.dist.precision},
        ]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a preset differs from Table 9")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    result = compare("lavit_table9", measured_table(), mode="numeric", profile="paper")
    csv_path, _ = write_comparison(result, args.results_dir)
    shown = result.numbers[result.numbers["target"]][["row", "column", "printed", "measured", "verdict"]]
    print(shown.to_markdown(index=False, tablefmt="simple"))
    print(settings_table().to_markdown(index=False, tablefmt="simple"))
    print(f"\n{result.summary()}\nwrote {csv_path}")
    if args.check and not result.passed:
        print(f"CHECK FAILED:\n{result.failures.to_string(index=False)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
