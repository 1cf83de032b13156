"""VILA Table 1: train or freeze the LLM in pre-training (PreT) and SFT; Transformer vs linear projector (§3.1).

    python reproduce/vila_table1.py [--profile mini] [--check] [--update-band]
    python reproduce/vila_table1.py --profile paper --data-root DIR --cluster slurm [--device cuda]   # GPU cluster

Rows (the paper's settings):

    (a) PreT ✗  SFT ✗  Transformer    projector-only pre-training and SFT (`train_llm=false` in stages 1 and 2)
    (b) PreT ✗  SFT ✓  Transformer
    (c) PreT ✓  SFT ✓  Transformer
    (d) PreT ✓  SFT ✓  Linear         the recipe the paper adopts after this table
    VILA recipe (mlp2x_gelu)           mini only: the shared mini chain (Tables 5 and 6's model), PreT ✓ SFT ✓ with
                                       the released scripts' projector (the mini preset's), for reference

`mini` (CPU): the mini VILA chain (`reproduce/vila_mini_chain.py`) with the switches of each row
(`model.projector.type=transformer` in all three stages of (a)-(c), `train_llm=false` in stage 1 and/or 2). Rows
share runs through their chain prefixes: the two stand-ins for all rows; stage 0 with the Transformer projector
for (a)-(c); the frozen-LLM stage 1 for (a) and (b); the last row is the chain Tables 5 and 6 evaluate (evaluated
only). Nine stage runs beyond the shared chain: (a)-(c) six, (d) three. Columns: the
mini world's held-out test questions and images, 0-shot and 4-shot in context (`eval/fewshot.py`: demonstrations
from the 200-image train pool, 3 demonstration seeds, mean; their std over the seeds beside; each demonstration in
the mini world's own phrasing, "Question: q Answer: a." and a caption after its image, where the paper profile uses
OpenFlamingo's "Short answer:" and "Output:", words the mini corpora never contain), the mini counterparts
of OKVQA/TextVQA (VQA accuracy) and COCO/Flickr (CIDEr); Avg = the mean of the VQA accuracy and the CIDEr of the
shot count, as the paper's Avg (CIDEr is in the hundreds here, so it dominates the Avg). The paper's claims
(results/mini/vila_table1.yaml) are reported, not gated; the sanity claim (in-context demonstrations do not break
the LLM-trained model's answers) is not gated either: the mini model's in-context ability is what Table 1 measures.

`paper`: the four settings trained with the `paper` presets (Llama-2-7B, CLIP ViT-L/14-336; pre-training on
MMC4-core only, as the ablation; SFT on the data under `--data-root`), evaluated on OKVQA, TextVQA, COCO and Flickr30k
0/4-shot. It needs a GPU cluster (`--cluster slurm`) and is never run in CI. Layout under `--data-root`:

    weights/llama-2-7b/  weights/clip-vit-large-patch14-336/        the released LLM and vision tower (HF folders)
    llava_pretrain/blip_laion_cc_sbu_558k.json + llava_pretrain/images/   stage 0's caption alignment data
    mmc4/*.jsonl + mmc4/images/                                     MMC4-core (stage 1)
    sft/*.json + sft/images/                                        the SFT blend (Table 10, LLaVA layout)
    + the benchmarks' official layouts (eval/fewshot.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.table import Column, Profile, StageRun, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import VILA_CHAIN, vila_chain

TRANSFORMER = ("model.projector.type=transformer",)  # the block sizes are the mini preset's (ProjectorConfig)
LINEAR = ("model.projector.type=linear",)
FROZEN = ("train_llm=false",)

# (row, projector switch, stage-1 switch, stage-2 switch)
SETTINGS = (
    ("(a)", TRANSFORMER, FROZEN, FROZEN),
    ("(b)", TRANSFORMER, FROZEN, ()),
    ("(c)", TRANSFORMER, (), ()),
    ("(d)", LINEAR, (), ()),
)
SHARED = "VILA recipe (mlp2x_gelu)"  # the shared mini chain (Tables 5 and 6): the released projector, both stages trained


def _chain(projector, pretrain, sft):
    """The mini chain with the projector type switched in all three stages (a run's model config must match the
    run it starts from) and the stage-1 / stage-2 switches."""
    return vila_chain(projector=projector, pretrain=projector + pretrain, sft=projector + sft)


def _task_value(task_dir: Path, task: str, metric: str) -> float:
    """One metric of a sibling task's results (the tasks of a row are evaluated side by side under one folder)."""
    rows = json.loads((task_dir.parent / task / "results.json").read_text())
    return next(float(r["value"]) for r in rows if r["metric"] == metric)


def _avg(parts: tuple[tuple[str, str], ...]):
    """The mean of the (task, metric) values of one shot count, read from the tasks' results (the paper's Avg)."""

    def derive(ctx, task_dir: Path) -> float:
        return sum(_task_value(task_dir, task, metric) for task, metric in parts) / len(parts)

    return derive


def _columns(benchmarks: tuple[tuple[str, str, str], ...]) -> tuple[Column, ...]:
    """(label, base task, metric) per benchmark -> its 0-shot and 4-shot columns, then Avg 0-shot and Avg 4-shot."""
    out = [Column(f"{label} {k}-shot", f"{task}_{k}shot", metric) for k in (0, 4) for label, task, metric in benchmarks]
    for k in (0, 4):
        parts = tuple((f"{task}_{k}shot", metric) for _, task, metric in benchmarks)
        out.append(Column(f"Avg {k}-shot", parts[0][0], "", derive=_avg(parts)))
    return tuple(out)


def _difference(task: str, minus: str, metric: str):
    """`metric` of `task` minus that of `minus` (the claims compare rows, so a within-row difference is a column)."""

    def derive(ctx, task_dir: Path) -> float:
        return _task_value(task_dir, task, metric) - _task_value(task_dir, minus, metric)

    return derive


def _gain(task: str, metric: str):
    """4-shot minus 0-shot of one benchmark: in-context learning."""
    return _difference(f"{task}_4shot", f"{task}_0shot", metric)


def _shuffled_drop(task: str, metric: str):
    """4-shot with the true demonstration answers minus 4-shot with them shuffled among the demonstrations
    (`eval/fewshot.py` `*_4shot_shuffled`): above 0 when the model reads its demonstrations."""
    return _difference(f"{task}_4shot", f"{task}_4shot_shuffled", metric)


def _drop_beyond_seed_std(task: str, metric: str):
    """The shuffled-answers drop minus the larger of the two tasks' standard deviations over the demonstration seeds:
    above 0 only when the drop is larger than the seed-to-seed variation (a drop of 0.2 points against a std of 4.3
    is no evidence that the model reads its demonstrations). Written before the tables were rerun on it."""

    def derive(ctx, task_dir: Path) -> float:
        drop = _shuffled_drop(task, metric)(ctx, task_dir)
        std = max(_task_value(task_dir, f"{task}_4shot{s}", f"{metric}/std") for s in ("", "_shuffled"))
        return drop - std

    return derive


MINI_COLUMNS = _columns((("VQA", "mini_vqa", "vqa_accuracy"), ("Caption", "mini_caption", "CIDEr"))) + (
    Column("VQA 4-shot gain", "mini_vqa_4shot", "", derive=_gain("mini_vqa", "vqa_accuracy")),
    Column("Caption 4-shot gain", "mini_caption_4shot", "", derive=_gain("mini_caption", "CIDEr")),
    Column("VQA 4-shot std", "mini_vqa_4shot", "vqa_accuracy/std"),
    Column("Caption 4-shot std", "mini_caption_4shot", "CIDEr/std"),
    Column("VQA 4-shot shuffled answers", "mini_vqa_4shot_shuffled", "vqa_accuracy"),
    Column("Caption 4-shot shuffled answers", "mini_caption_4shot_shuffled", "CIDEr"),
    Column("VQA drop with shuffled answers", "mini_vqa_4shot_shuffled", "", derive=_shuffled_drop("mini_vqa", "vqa_accuracy")),
    Column("Caption drop with shuffled answers", "mini_caption_4shot_shuffled", "", derive=_shuffled_drop("mini_caption", "CIDEr")),
    Column("VQA drop beyond seed std", "mini_vqa_4shot_shuffled", "", derive=_drop_beyond_seed_std("mini_vqa", "vqa_accuracy")),
    Column("Caption drop beyond seed std", "mini_caption_4shot_shuffled", "", derive=_drop_beyond_seed_std("mini_caption", "CIDEr")),
)

MINI = Profile(
    rows={**{label: Trained("vila", _chain(p, pre, sft)) for label, p, pre, sft in SETTINGS}, SHARED: Trained("vila", VILA_CHAIN)},
    columns=MINI_COLUMNS,
    reference="mini/vila_table1",
    mode="claim",
    data="miniworld",
    eval_limit=100,  # mini_caption_*: the first 100 test images
    task_limits={"mini_vqa_0shot": 300, "mini_vqa_4shot": 150, "mini_vqa_4shot_shuffled": 150},
    band_rules={c.label: BandRule(relative=0.1, floor=5.0) if c.label.startswith("VQA") else BandRule(relative=0.15, floor=20.0)
                for c in MINI_COLUMNS},  # fmt: skip
    describe="The mini VILA chain with Table 1's switches, on the mini world's held-out test questions (first 300 "
             "0-shot, 150 4-shot) and images (first 100), 4-shot = mean over 3 demonstration seeds. Not comparable "
             "with the paper's numbers.",
)

# ---------------------------------------------------------------------------------------------
# Paper scale: the `paper` presets on the data under --data-root (a GPU cluster).

PAPER_PROJECTOR = StageRun(
    "vila_projector",
    overrides=("llm_path={data}/weights/llama-2-7b", "vision_tower_path={data}/weights/clip-vit-large-patch14-336",
               "text_tokenizer={data}/weights/llama-2-7b", "data.files=[{data}/llava_pretrain/blip_laion_cc_sbu_558k.json]",
               "data.image_folder={data}/llava_pretrain/images"),  # fmt: skip
)
PAPER_PRETRAIN = StageRun(
    "vila_pretrain",
    overrides=("text_tokenizer={data}/weights/llama-2-7b", "data.mmc4=[{data}/mmc4/*.jsonl]", "data.mmc4_image_root={data}/mmc4/images",
               'data.blend={"mmc4": 1.0, "coyo": 0.0}'),  # fmt: skip
    inputs=(("init_from", "vila_projector"),),
)
PAPER_SFT = StageRun(
    "vila_sft",
    overrides=("text_tokenizer={data}/weights/llama-2-7b", "data.files=[{data}/sft/*.json]", "data.image_folder={data}/sft/images"),
    inputs=(("init_from", "vila_pretrain"),),
)


def _paper_chain(projector, pretrain, sft):
    def w(run, extra):
        return StageRun(run.stage, overrides=run.overrides + tuple(extra), inputs=run.inputs)

    paper_projector = tuple(o for o in projector if o.startswith("model.projector.type"))  # the paper's block sizes are ours
    return (w(PAPER_PROJECTOR, paper_projector), w(PAPER_PRETRAIN, paper_projector + pretrain), w(PAPER_SFT, paper_projector + sft))


PAPER = Profile(
    rows={label: Trained("vila", _paper_chain(p, pre, sft)) for label, p, pre, sft in SETTINGS},
    columns=_columns((("OKVQA", "okvqa_val", "vqa_accuracy"), ("TextVQA", "textvqa_val", "vqa_accuracy"),
                      ("COCO", "coco_karpathy_test", "CIDEr"), ("Flickr", "flickr30k_test", "CIDEr"))),
    reference="vila_table1",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="The four settings trained with the paper presets, OKVQA / TextVQA / COCO / Flickr30k, 0- and 4-shot.",
)

TABLE = register_table(TableSpec(key="vila_table1", script="reproduce/vila_table1.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
