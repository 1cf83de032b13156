"""VILA Table 3: the pre-training corpus (COYO pairs, MMC4 as pairs, MMC4 interleaved, MMC4 + COYO) (§3.2).

    python reproduce/vila_table3.py [--profile mini] [--check] [--update-band]

`mini` (CPU): the mini VILA chain (`reproduce/vila_mini_chain.py`) with stage 1's corpus switched
(`data.blend`, `data.mmc4_format`), every row then through the same stage 2; the MMC4+COYO row *is* the shared chain
(the mini preset blends both 1:1), the Llama-2 row is the chain's stage-0 run (its LLM is the stand-in unchanged).
Three stage-1 runs and their three stage-2 runs beyond the shared chain. Columns: Table 1's (the 0-/4-shot mini VQA
and captions and their Avg, `reproduce/vila_table1.py`) and Table 6's text-only ones for MMLU (mini_knowledge 5-shot
through lm-eval, at chance for the stand-in; the same facts as 0-shot sentence completions, `Recall`; and the
held-out perplexity: Recall and perplexity are where forgetting shows at this scale).
The paper's claims are reported, not gated (results/mini/vila_table3.yaml). Not yet run in this repository's
history: the first run writes results/vila_table3.{csv,md}.

The paper profile is not declared: Table 3's rows are trained models of the ablation setting (Table 1's paper
profile shows how such chains are declared; they need a GPU cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.table import Column, Profile, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import VILA_CHAIN, VILA_CHAIN_STAGE0, held_out_perplexity, vila_chain
from reproduce.vila_table1 import _columns

# Stage-1 corpus switches (appended after the chain's own overrides, so they win).
CORPORA = (
    ("COYO", ('data.blend={"mmc4": 0.0, "coyo": 1.0}',)),
    ("MMC4-pairs", ('data.blend={"mmc4": 1.0, "coyo": 0.0}', "data.mmc4_format=pairs")),
    ("MMC4", ('data.blend={"mmc4": 1.0, "coyo": 0.0}',)),
)

COLUMNS = _columns((("VQA", "mini_vqa", "vqa_accuracy"), ("Caption", "mini_caption", "CIDEr"))) + (
    Column("Knowledge", "mini_knowledge", "accuracy"),
    Column("Recall", "mini_knowledge_recall", "accuracy"),
    Column("Held-out perplexity", "", "", derive=lambda ctx, run_dir: held_out_perplexity(run_dir, ctx.world)),
)

MINI = Profile(
    rows={
        "Llama-2 (LLM stand-in)": Trained("vila", VILA_CHAIN_STAGE0),
        **{label: Trained("vila", vila_chain(pretrain=switch)) for label, switch in CORPORA},
        "MMC4+COYO": Trained("vila", VILA_CHAIN),
    },
    columns=COLUMNS,
    reference="mini/vila_table3",
    mode="claim",
    data="miniworld",
    eval_limit=100,  # as Table 1: the first 100 test images; 300 / 150 questions
    task_limits={"mini_vqa_0shot": 300, "mini_vqa_4shot": 150, "mini_knowledge": None, "mini_knowledge_recall": None},
    band_rules={**{c.label: BandRule(relative=0.1, floor=5.0) if c.label.startswith("VQA") else BandRule(relative=0.15, floor=20.0)
                   for c in COLUMNS if c.task.startswith("mini_") and c.task != "mini_knowledge"},
                "Knowledge": BandRule(relative=0.1, floor=5.0), "Recall": BandRule(relative=0.1, floor=5.0), "Held-out perplexity": BandRule(relative=0.05, floor=0.05)},  # fmt: skip
    describe="The mini VILA chain with stage 1 on each corpus, then the same SFT; Table 1's columns and Table 6's "
             "text-only columns. Not comparable with the paper's numbers.",
)

TABLE = register_table(TableSpec(key="vila_table3", script="reproduce/vila_table3.py", profiles={"mini": MINI}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
