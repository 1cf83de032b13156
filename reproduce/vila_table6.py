"""VILA Table 6: text-only accuracy of the VLM against its LLM (MMLU, BBH, DROP).

    python reproduce/vila_table6.py [--profile mini] [--check] [--update-band]
    python reproduce/vila_table6.py --profile paper --checkpoint DIR --data-root DIR [--device cuda]

`mini` (CPU; the mini VILA chain of `reproduce/vila_mini_chain.py`, shared with the other mini VILA tables): the
chain's LLM before and after VILA training, text only:

    LLM stand-in (before VILA)   the chain's stage-0 run: its LLM is the vila_llm_pretrain stand-in itself (stage 0
                                 trains only the projector), the mini counterpart of "Llama-2"
    VILA after stage 1           the stage-1 (pre-training) run: the LLM trained on interleaved image-text
    VILA (mini)                  the stage-2 (joint SFT) run: the chain's final model

Columns: `Knowledge` = `mini_knowledge` (the mini world's 81 MMLU-format questions about its invented facts, 5-shot
through lm-eval: the MMLU counterpart; chance 25%), `Recall` (`mini_knowledge_recall`: the same facts as sentence
completions over the same four options, 0-shot: whether the LLM holds the facts apart from the MMLU letter format)
and `Held-out perplexity` of the LLM on new documents of the
corpus' sources (same generator, another seed; never trained on). BBH and DROP have no mini counterpart. The paper's
claim (a small gap to the text-only model at 7B) becomes "VILA stays within a few points / a few percent of its
LLM"; it is reported, not gated (results/mini/vila_table6.yaml). The LLM stand-in is at chance on the knowledge
questions (as LaVIT's, `results/mini_release.md`), so that column's verdicts compare noise; Recall and the
perplexity are the columns that can show forgetting at this scale.

`paper`: a released VILA checkpoint (`--checkpoint`, e.g. VILA-7B) on MMLU (5-shot, lm-eval), BBH (3-shot) and DROP
(3-shot, F1) through the lm-eval adapters (`eval/mmlu.py`, `eval/text_benchmarks.py`) from `--data-root`
(`mmlu/`, `bbh/`, `drop/` as released), compared with the paper's "VILA (7B)" row.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.table import Column, Computed, Profile, Released, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import VILA_CHAIN, VILA_CHAIN_STAGE0, VILA_CHAIN_STAGE1, held_out_perplexity

BEFORE = "LLM stand-in (before VILA)"
STAGE1 = "VILA after stage 1 (pre-training)"
OURS = "VILA (mini)"


def _perplexity(ctx, run_dir: Path) -> float:
    return held_out_perplexity(run_dir, ctx.world)


MINI = Profile(
    rows={
        BEFORE: Trained("vila", VILA_CHAIN_STAGE0),
        STAGE1: Trained("vila", VILA_CHAIN_STAGE1),
        OURS: Trained("vila", VILA_CHAIN),
        "Chance": Computed(lambda ctx: {"Knowledge": 25.0, "Recall": 25.0}, "four choices"),
    },
    columns=(
        Column("Knowledge", "mini_knowledge", "accuracy"),
        Column("Recall", "mini_knowledge_recall", "accuracy"),
        Column("Held-out perplexity", "", "", derive=_perplexity),
    ),
    reference="mini/vila_table6",
    mode="claim",
    data="miniworld",
    band_rules={"Knowledge": BandRule(relative=0.1, floor=5.0), "Recall": BandRule(relative=0.1, floor=5.0), "Held-out perplexity": BandRule(relative=0.05, floor=0.05)},
    describe="The mini VILA chain's LLM, text only, before and after VILA training (mini_knowledge 5-shot through "
             "lm-eval; the same facts as 0-shot sentence completions; perplexity on held-out corpus documents). Not comparable with the paper's numbers.",
)

PAPER = Profile(
    rows={"VILA (7B)": Released("vila")},
    columns=(
        Column("MMLU", "mmlu", "accuracy"),
        Column("BBH", "bbh", "accuracy"),
        Column("DROP", "drop", "f1"),
    ),
    reference="vila_table6",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="A released VILA checkpoint on the text-only benchmarks (MMLU 5-shot, BBH 3-shot, DROP 3-shot F1), lm-eval.",
)

TABLE = register_table(TableSpec(key="vila_table6", script="reproduce/vila_table6.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
