"""VILA Table 8: a visual expert (CogVLM-style: the LLM frozen, a trainable copy of its weights used at the visual
tokens) against fine-tuning the LLM itself, both pre-trained on MMC4 (§4.3).

    python reproduce/vila_table8.py [--profile mini] [--check] [--update-band]

`mini` (CPU): the mini VILA chain (`reproduce/vila_mini_chain.py`) pre-trained on the interleaved MMC4-style
documents only (VILA Table 3's MMC4 switch). Fine-tune is that row itself (VILA Table 3's MMC4 row and Table 4's
"MMC4 / Vis.+Text": the paper prints the same numbers for both); Visual Expert switches `model.ablation.visual_expert`
on in stages 1 and 2 (`model/vila/modeling_vila.py`: the expert starts as a copy of the stage-0 LLM; with it only
the expert and the projector train, the LLM stays frozen). Stage 0 is shared (the expert does not exist there).
Columns: `#Param` = the model's parameters outside the vision tower (LLM, expert, projector), read from the run's
weights, as a multiple of the Fine-tune row's (the paper: 1.9x); the SFT run's training loss over its last 50 steps
(from its metrics.jsonl: whether SFT learned the answer format); then VILA Table 1's 0-/4-shot Avg columns (the
mini VQA and captions) and their parts. The claims are reported, not gated (results/mini/vila_table8.yaml).

The paper profile is not declared: its rows are trained models of the ablation setting (VILA Table 1's paper profile
shows how such chains are declared; they need a GPU cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.table import Column, Profile, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import vila_chain
from reproduce.vila_table1 import _columns
from reproduce.vila_table3 import CORPORA
from reproduce.vila_table3 import MINI as TABLE3

MMC4 = dict(CORPORA)["MMC4"]
EXPERT = ("model.ablation.visual_expert=true",)
FINE_TUNE = "Fine-tune"


def parameters_outside_the_tower(run_dir: Path) -> int:
    """Parameters of the run's final weights, the vision tower's left out (it is the same frozen tower in every row)."""
    from model.weights import read_weights

    state, _ = read_weights(str(run_dir))
    return sum(t.numel() for k, t in state.items() if not k.startswith("vision_tower."))


def _relative_size(ctx, run_dir: Path) -> float:
    """#Param as a multiple of the Fine-tune row's (the paper's 1x / 1.9x)."""
    return parameters_outside_the_tower(run_dir) / parameters_outside_the_tower(ctx.run_dirs[FINE_TUNE]["vila_sft"])


LAST_STEPS = 50  # the SFT loss column averages the last 50 of its 1,000 steps (one step's loss is one batch of 8)


def final_sft_loss(ctx, run_dir: Path) -> float:
    """Mean training loss of the row's SFT run over its last LAST_STEPS steps (its metrics.jsonl): whether the SFT
    learned its answer format (the expert row keeps the LLM frozen in SFT as well)."""
    import json

    path = run_dir / "metrics.jsonl"
    losses = [float(json.loads(line)["loss"]) for line in path.read_text().splitlines() if line.strip()]
    if len(losses) < LAST_STEPS:
        raise ValueError(f"{path}: {len(losses)} steps logged, fewer than the {LAST_STEPS} the SFT loss column averages")
    return sum(losses[-LAST_STEPS:]) / LAST_STEPS


COLUMNS = (Column("#Param", "", "", derive=_relative_size),
           Column("SFT loss (last 50 steps)", "", "", derive=final_sft_loss),
           *_columns((("VQA", "mini_vqa", "vqa_accuracy"), ("Caption", "mini_caption", "CIDEr"))))  # fmt: skip

MINI = Profile(
    rows={
        "Visual Expert": Trained("vila", vila_chain(pretrain=MMC4 + EXPERT, sft=EXPERT)),
        FINE_TUNE: Trained("vila", vila_chain(pretrain=MMC4)),
    },
    columns=COLUMNS,
    reference="mini/vila_table8",
    mode="claim",
    data="miniworld",
    eval_limit=TABLE3.eval_limit,  # Table 3's limits: the Fine-tune row's evaluations are Table 3's MMC4 row's
    task_limits=TABLE3.task_limits,
    band_rules={"#Param": BandRule(relative=0.0, floor=1e-6), "SFT loss (last 50 steps)": BandRule(relative=0.1, floor=0.05),
                **{c.label: TABLE3.band_rules[c.label] for c in COLUMNS[2:]}},  # fmt: skip
    describe="The mini VILA chain pre-trained on MMC4-style documents, with a visual expert (frozen LLM + a "
             "trainable copy at the visual tokens) or with the LLM fine-tuned; #Param relative to Fine-tune. Not "
             "comparable with the paper's numbers.",
)

TABLE = register_table(TableSpec(key="vila_table8", script="reproduce/vila_table8.py", profiles={"mini": MINI}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
