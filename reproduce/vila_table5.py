"""VILA Table 5: the 12 visual-language benchmarks.

    python reproduce/vila_table5.py [--profile mini] [--check] [--update-band]
    python reproduce/vila_table5.py --profile paper --checkpoint DIR --data-root DIR [--device cuda]

`paper`: a released VILA checkpoint (`--checkpoint`: the LLaVA-style single directory or llm/ + vision_tower/ +
mm_projector/, `model/vila/checkpoints.py`) on the twelve benchmarks in their official layouts under `--data-root`
(`eval/tasks.py`, `eval/vlm_benchmarks.py`), compared with the paper's "VILA-7B (ours)" row:

    VQAv2 vqav2_val (the paper reports test-dev, whose answers are not public: val is what can be scored offline)
    GQA gqa_testdev · VisWiz vizwiz_val · SQA-I scienceqa_img · VQA-T textvqa_val · POPE pope (F1, 3 splits)
    MME mme (perception) · MMB mmbench_dev · MMB-CN mmbench_cn_dev (circular) · SEED seed_bench_img
    LLaVA-W llava_bench · MM-Vet mm_vet: GPT-4 judges them; no judge is available offline (`eval/judge.py`), so the
        model's answers are generated and cached, and the cells read "needs a judge" (no number is invented)

`mini` (CPU): the mini VILA chain's final model (`reproduce/vila_mini_chain.py`, shared with the other mini VILA
tables) on the mini counterparts that exist: the mini world's held-out VQA (`mini_vqa`, the first 3,000 test
questions, VILA's short-answer prompt) overall (VQAv2's counterpart), on its yes/no object-presence questions ("is
there a red shape?", POPE's counterpart: POPE asks "Is there a <object> in the image?") and on its colour / shape
questions (GQA's attribute questions). The other nine benchmarks (text reading, science diagrams, multiple-choice
suites, judged chat) have no counterpart in a world of single coloured shapes. Baselines that never see the image:
the training answer prior per question type and per question string (`harness/miniworld.py`).

The instrument's competence is measured beside it (issue 18 asks the mini VILA for the mini LaVIT's targets): its
captions of the first 500 test images (CIDEr, and whether each names the image's shape and colour, against chance
captions), and a control, the same model with the test images permuted among the questions
(`mini_vqa_image_shuffle`), which must fall to the blind baselines if its answers come from the image.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.mini_chain import caption_hits, chance_caption_cells, image_shuffle_cells, vqa_by_type, vqa_cells
from reproduce.table import Column, Computed, Profile, Released, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import VILA_CHAIN, VILA_EVAL_LIMIT, VILA_TASK_LIMITS

OURS = "VILA (mini)"


def _needs_judge() -> float:
    """The judged benchmarks' cell: the answers are generated and cached (OUT/<task>/predictions.jsonl) for a judge
    to score later; without one the cell is empty and the comparison reads "needs a judge" (reproduce/compare.py)."""
    return float("nan")


VQA_LABELS = ("VQAv2 (mini VQA)", "POPE (mini yes/no)", "GQA (mini colour/shape)")


def _blind(kind: str):
    return lambda ctx: vqa_cells(ctx, VQA_LABELS, blind=kind)


def _image_shuffle(ctx) -> dict[str, float]:
    """The chain's final model on the same questions with the test images permuted among them."""
    return image_shuffle_cells(ctx, OURS, "vila", "vila_sft", VQA_LABELS)


# The benchmarks' counterparts (Tables 9 and 11 show them too), then the captions that measure the instrument.
VQA_COLUMNS = (
    Column("VQAv2 (mini VQA)", "mini_vqa", "vqa_accuracy"),
    Column("POPE (mini yes/no)", "mini_vqa", "", derive=vqa_by_type("yes/no")),
    Column("GQA (mini colour/shape)", "mini_vqa", "", derive=vqa_by_type("other")),
)
CAPTION_COLUMNS = (
    Column("Caption CIDEr", "mini_caption", "CIDEr"),
    Column("Shape named", "mini_caption", "", scale=100, derive=caption_hits("shape")),
    Column("Colour named", "mini_caption", "", scale=100, derive=caption_hits("color")),
)

MINI = Profile(
    rows={
        OURS: Trained("vila", VILA_CHAIN),
        "Images shuffled (VILA mini)": Computed(_image_shuffle, "the same model, the test images permuted among the questions"),
        "Answer prior (no image)": Computed(_blind("question_type"), "most frequent training answer per question type"),
        "Question prior (no image)": Computed(_blind("question"), "most frequent training answer per question string"),
        "Chance captions": Computed(chance_caption_cells, "template captions with a random shape and colour"),
    },
    columns=VQA_COLUMNS + CAPTION_COLUMNS,
    reference="mini/vila_table5",
    mode="claim",
    data="miniworld",
    task_limits={"mini_vqa": VILA_TASK_LIMITS["mini_vqa"], "mini_vqa_image_shuffle": VILA_TASK_LIMITS["mini_vqa"],
                 "mini_caption": VILA_EVAL_LIMIT},  # fmt: skip
    band_rules={c: BandRule(relative=0.1, floor=3.0) for c in ("VQAv2 (mini VQA)", "POPE (mini yes/no)", "GQA (mini colour/shape)",
                                                               "Shape named", "Colour named")},  # fmt: skip
    describe="The mini VILA chain's final model, zero-shot on the mini world's held-out test questions (the mini "
             "counterparts of VQAv2, POPE and GQA). Not comparable with the paper's numbers.",
)

PAPER = Profile(
    rows={"VILA-7B (ours)": Released("vila")},
    columns=(
        Column("VQAv2", "vqav2_val", "vqa_accuracy"),
        Column("GQA", "gqa_testdev", "gqa_accuracy"),
        Column("VisWiz", "vizwiz_val", "vqa_accuracy"),
        Column("SQA-I", "scienceqa_img", "choice_accuracy"),
        Column("VQA-T", "textvqa_val", "vqa_accuracy"),
        Column("POPE", "pope", "F1"),
        Column("MME", "mme", "perception"),
        Column("MMB", "mmbench_dev", "circular_accuracy"),
        Column("MMB-CN", "mmbench_cn_dev", "circular_accuracy"),
        Column("SEED", "seed_bench_img", "choice_accuracy"),
        Column("LLaVA-W", "llava_bench", "", derive=lambda ctx, task_dir: _needs_judge()),
        Column("MM-Vet", "mm_vet", "", derive=lambda ctx, task_dir: _needs_judge()),
    ),
    reference="vila_table5",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="A released VILA checkpoint on the twelve benchmarks (official layouts, the released prompts); "
             "LLaVA-Bench and MM-Vet need a GPT-4 judge, which is not available offline.",
)

TABLE = register_table(TableSpec(key="vila_table5", script="reproduce/vila_table5.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
