"""LaVIT Table 3: ablations of stage 2's visual objective (3a) and of the token length (3b).

    python reproduce/table3.py [--profile mini] [--check] [--update-band]
    python reproduce/table3.py --profile paper --data-root DIR [--cluster slurm] [--device cuda]

Writes `results/lavit_table3a.*` and `results/lavit_table3b.*` (and `lavit_table3b.png`, the histogram of visual
tokens per test image).

`mini` (default, CPU): every row is Table 1's mini chain (`reproduce/mini_chain.py`) with at most one switch, so
the shared row *is* Table 1's model (the same run directories, trained once) and each other row costs what its
switch changes:

* 3a Regression: one more stage-2 run with `model.ablation.visual_objective=regression` (MSE on the next visual
  embedding through a regression head, like Emu) against Classification (Table 1's run); both rows with two
  stage-2 seeds (0 and 1: the cells are their means, the per-seed values and spread are printed beside);
* 3b Fixed: a stage-1a run with `tokenizer.fixed_length=true` (every patch a token, no selector) and its own
  stage 2, against Dynamic (Table 1's runs). Num is the stage-2 run's mean visual tokens per image, Time its
  training-step wall time per image-text pair (both from the run's metrics.jsonl).

The columns are the mini counterparts of Flickr / VQAv2 / OKVQA (mapping in `results/mini/lavit_table3a.yaml`). The
paper's claims are reported (holds / fails, with both numbers) but do not gate `--check`, which gates on every
cell being measured and on the regression band of a previous mini run (`results/mini/<table>.band.json`, written
by `--update-band`).

`paper`: the same rows with the `paper` presets (stage 1a -> stage 2 on the data under --data-root, CLIP ViT-L/14
and LLaMA-7B weights there), evaluated on Flickr30k / VQAv2 / OK-VQA and compared with the printed numbers. It is
declared (and resolved by the tests) but needs a GPU cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.mini_chain import (ABLATION_BAND, ABLATION_COLUMNS, MINI_CHAIN, MINI_EVAL_LIMIT, MINI_TASK_LIMITS, PAPER_ABLATION_COLUMNS,
                                 mini_chain, paper_chain)
from reproduce.table import Column, Profile, TableSpec, Trained, main, register_table

REGRESSION = ("model.ablation.visual_objective=regression", "model.ablation.regression_loss=mse")
FIXED_TOKENIZER = ("tokenizer.fixed_length=true",)
FIXED_UNIFIED = ("model.tokenizer.fixed_length=true",)

# ---------------------------------------------------------------------------------------------
# Table 3b's training-side columns, from the stage-2 run's metrics.jsonl (one record per step).


def _run_totals(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the stage-2 run wrote no metrics")
    totals = {"image_docs": 0.0, "image_tokens": 0.0, "step_time_s": 0.0, "steps": 0.0}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key in ("image_docs", "image_tokens", "step_time_s"):
            totals[key] += float(record[key])
        totals["steps"] += 1
    if totals["image_docs"] <= 0:
        raise ValueError(f"{path}: no image-text documents were trained on")
    return totals


def tokens_per_image(ctx, run_dir: Path) -> float:
    """Mean visual tokens per image-text document the stage-2 run trained on."""
    totals = _run_totals(run_dir)
    return totals["image_tokens"] / totals["image_docs"]


def pairs_per_step(ctx, run_dir: Path) -> float:
    """Image-text documents per training step: sequences are packed to a fixed length, so fewer visual tokens per
    image fit more pairs in a step. Unlike the wall time, independent of the machine and its load."""
    totals = _run_totals(run_dir)
    return totals["image_docs"] / totals["steps"]


def ms_per_pair(ctx, run_dir: Path) -> float:
    """Training-step wall time (data, forward, backward, update) per image-text document, in milliseconds."""
    totals = _run_totals(run_dir)
    return 1000.0 * totals["step_time_s"] / totals["image_docs"]


# ---------------------------------------------------------------------------------------------
# The histogram of visual tokens per held-out test image, through each row's trained stage-1a tokenizer.


def test_image_token_counts(unified_run: Path, data_root: Path, limit: int) -> list[int]:
    """Tokens per image of the first `limit` mini_caption test images, selected by the tokenizer of the stage-2 run
    `unified_run` as its data pipeline selects them (the run's `visual_selection`, per-image noise by image id)."""
    import torch

    from eval.tasks import get_task
    from harness.config import load_config
    from model.lavit.checkpoints import load_tokenizer_checkpoint
    from train.lavit.config import UnifiedStageConfig
    from train.lavit.unified import select_and_code
    from model.lavit.tokenizer import build_tokenizer
    from PIL import Image
    from train.stages.common import latest_checkpoint_dir

    cfg = load_config(UnifiedStageConfig, unified_run / "config.yaml")
    tokenizer = build_tokenizer(cfg.model.tokenizer).eval()
    load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(cfg.tokenizer_checkpoint))
    samples, root = get_task("mini_caption").read(data_root, limit)
    counts = []
    with torch.no_grad():
        for start in range(0, len(samples), 64):
            batch = samples[start : start + 64]
            pixels = tokenizer.preprocess([Image.open(root / s.image).convert("RGB") for s in batch])
            keeps, _ = select_and_code(tokenizer, pixels, [str(s.id) for s in batch], cfg.visual_selection, cfg.loop.seed)
            counts += [int(k.sum()) for k in keeps]
    return counts


def _histogram(ctx, path: Path) -> Path:
    from reproduce.figures import histogram

    runs = {label: ctx.eval_dirs[label].parent for label in ("Dynamic", "Fixed")}
    counts = {label: test_image_token_counts(run, ctx.data_root, ctx.profile.eval_limit) for label, run in runs.items()}
    for label, values in counts.items():
        print(f"[table] {label}: {sum(values) / len(values):.2f} visual tokens per test image ({len(values)} images)")
    return histogram(counts, path, title="Visual tokens per held-out test image (mini tokenizer: 16 patches)", xlabel="tokens per image")


# ---------------------------------------------------------------------------------------------
# Declarations.

# 3a's VQA gaps are of the size of one seed's change (REPRODUCE.md): two stage-2 seeds per row, the cells their means.
SEEDS_3A = (0, 1)  # a third seed per row would put .ci/run over its 90 minutes (REPRODUCE.md)

MINI_3A = Profile(
    rows={
        "Regression": Trained("lavit", mini_chain(unified=REGRESSION), seeds=SEEDS_3A),
        "Classification": Trained("lavit", MINI_CHAIN, seeds=SEEDS_3A),
    },
    columns=ABLATION_COLUMNS,
    reference="mini/lavit_table3a",
    eval_limit=MINI_EVAL_LIMIT,
    task_limits=MINI_TASK_LIMITS,
    band_rules=ABLATION_BAND,
    describe="Mini world, zero-shot on held-out test images; stage 2 trained with each visual objective (the rest shared with Table 1).",
)
MINI_3B = Profile(
    rows={
        "Fixed": Trained("lavit", mini_chain(tokenizer=FIXED_TOKENIZER, unified=FIXED_UNIFIED)),
        "Dynamic": Trained("lavit", MINI_CHAIN),
    },
    columns=(
        Column("Num", "", "", derive=tokens_per_image),
        Column("Time", "", "", derive=ms_per_pair, machine_dependent=True),
        Column("Pairs per step", "", "", derive=pairs_per_step),
        *ABLATION_COLUMNS,
    ),
    reference="mini/lavit_table3b",
    eval_limit=MINI_EVAL_LIMIT,
    task_limits=MINI_TASK_LIMITS,
    describe="Mini world; stage 1a and stage 2 with and without the token selector. Num: visual tokens per image in stage 2; Time: stage-2 ms per image-text pair.",
    figure=_histogram,
    # Wall time depends on the machine and its load (CI trains from nothing elsewhere): its band only catches a run
    # an order of magnitude slower than the banded one.
    band_rules={**ABLATION_BAND, "Time": BandRule(relative=10.0, floor=0.0)},
)

PAPER_3A = Profile(
    rows={
        "Regression": Trained("lavit", paper_chain(unified=REGRESSION)),
        "Classification": Trained("lavit", paper_chain()),
    },
    columns=PAPER_ABLATION_COLUMNS,
    reference="lavit_table3a",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="The paper's ablation setting (§4.3), zero-shot.",
)
PAPER_3B = Profile(
    rows={
        "Fixed": Trained("lavit", paper_chain(tokenizer=FIXED_TOKENIZER, unified=FIXED_UNIFIED)),
        "Dynamic": Trained("lavit", paper_chain()),
    },
    columns=(Column("Num", "", "", derive=tokens_per_image), *PAPER_ABLATION_COLUMNS),
    reference="lavit_table3b",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="The paper's ablation setting (§4.3), zero-shot. Num: visual tokens per image in stage 2.",
)

TABLE_3A = register_table(TableSpec(key="lavit_table3a", script="reproduce/table3.py", profiles={"mini": MINI_3A, "paper": PAPER_3A}))
TABLE_3B = register_table(TableSpec(key="lavit_table3b", script="reproduce/table3.py", profiles={"mini": MINI_3B, "paper": PAPER_3B}))


def run(argv: list[str] | None = None) -> int:
    """Both halves, in order, on the same command line; the worse exit code. Bad input (exit 2) stops at the first
    half: the second would only repeat its error line."""
    first = main(TABLE_3A, argv)
    return first if first == 2 else max(first, main(TABLE_3B, argv))


if __name__ == "__main__":
    sys.exit(run())
