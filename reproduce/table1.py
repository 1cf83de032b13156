"""LaVIT Table 1: zero-shot multi-modal understanding (captioning CIDEr, VQA accuracy).

    python reproduce/table1.py [--profile mini] [--check]
    python reproduce/table1.py --profile paper --checkpoint DIR --data-root DIR [--cluster slurm] [--device cuda]

`mini` (default, CPU, about 10 minutes from nothing): trains a mini LaVIT on the mini world (easy-vqa's shape
images and a generated text corpus, `harness/miniworld.py`) through the same stages as the paper, each started
from the kind of state the paper assumes: the mini release's tiny ViT (`model/mini_release/`, the stand-in for
EVA-CLIP, loaded through `encoder_path`), a tiny LLaMA pretrained on the text corpus (for LLaMA-7B), then stage 1a
(the dynamic tokenizer) and stage 2 (unified pre-training on image-text pairs and text). It is then evaluated
zero-shot on the mini world's held-out test images: captions of the 1,000 test images (CIDEr against references
derived from each image's shape and colour, and whether a caption names the right shape and colour) and VQA
accuracy on the first 3,000 test questions (3 per image, 808 of them yes/no). The paper's claim "LaVIT surpasses the
baselines" becomes, at this scale, claims against baselines that cannot see the image: the answer prior per
question type, the stronger prior per question string, and captions that guess the attributes; and a control: the
same model with the test images permuted among the questions, which must fall to the blind baselines if its answers
come from the image. A claim that does not hold is reported as not holding.

`paper`: evaluates a released LaVIT checkpoint on the seven benchmarks of Table 1 in their official layouts and
compares with the paper's numbers (and prints the release's own numbers beside them).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.mini_chain import (MINI_CHAIN, MINI_EVAL_LIMIT, MINI_TASK_LIMITS, caption_hits, chance_caption_cells, image_shuffle_cells,
                                  vqa_by_type, vqa_cells)
from reproduce.table import Column, Computed, Profile, Released, TableSpec, Trained, main, register_table, task_limit

# ---------------------------------------------------------------------------------------------
# The mini profile: one LaVIT trained from nothing on the mini world.


OURS = "Ours (mini LaVIT)"


VQA_LABELS = ("VQA accuracy", "VQA yes/no", "VQA colour/shape")


def _blind(kind: str):
    """A baseline that never sees the image, scored on the same questions as the model."""
    return lambda ctx: vqa_cells(ctx, VQA_LABELS, blind=kind)


def _image_shuffle(ctx) -> dict[str, float]:
    """Our model on the same questions with the test images permuted among them (task mini_vqa_image_shuffle)."""
    return image_shuffle_cells(ctx, OURS, "lavit", "unified", VQA_LABELS, batch_size=ctx.profile.eval_batch_size)


def _gallery(ctx, path: Path) -> Path:
    """The first test images with the model's caption and its answers to two of their questions (green = right)."""
    from PIL import Image

    from eval.cache import saved_predictions
    from eval.tasks import get_task, mini_image_id
    from reproduce.figures import GalleryItem, gallery

    eval_dir = ctx.eval_dirs[OURS]

    captions, answers = (saved_predictions(eval_dir / task / "predictions.jsonl") for task in ("mini_caption", "mini_vqa"))
    questions, _ = get_task("mini_vqa").read(ctx.data_root, task_limit("mini_vqa", ctx.profile))
    by_image: dict[str, list] = {}
    for q in questions:
        by_image.setdefault(mini_image_id(q.image), []).append(q)
    samples, root = get_task("mini_caption").read(ctx.data_root, 8)
    items = []
    for s in samples:
        shape, color = ctx.world.labels["test"][str(s.id)]
        hits = ctx.world.caption_attribute_hits(captions.get(s.id, ""), s.id)
        lines, marks = [f"truth: {color} {shape}", f"caption: {captions.get(s.id, '')}"], [None, all(hits)]
        for q in by_image.get(str(s.id), [])[:2]:
            lines.append(f"Q: {q.text} A: {answers.get(q.id, '')}")
            marks.append(answers.get(q.id, "").strip().lower() == str(q.references[0]).lower())
        items.append(GalleryItem(Image.open(root / s.image), lines, marks))
    title = "mini LaVIT, zero-shot on held-out easy-vqa test images (green: right, red: wrong)"
    return gallery(items, path, columns=4, cell=200, title=title)


MINI = Profile(
    rows={
        OURS: Trained("lavit", MINI_CHAIN),
        "Images shuffled (ours)": Computed(_image_shuffle, "our model, the test images permuted among the questions"),
        "Answer prior (no image)": Computed(_blind("question_type"), "most frequent training answer per question type"),
        "Question prior (no image)": Computed(_blind("question"), "most frequent training answer per question string"),
        "Chance captions": Computed(chance_caption_cells, "template captions with a random shape and colour"),
    },
    columns=(
        Column("Caption CIDEr", "mini_caption", "CIDEr"),
        Column("Shape named", "mini_caption", "", scale=100, derive=caption_hits("shape")),
        Column("Colour named", "mini_caption", "", scale=100, derive=caption_hits("color")),
        Column("VQA accuracy", "mini_vqa", "vqa_accuracy"),
        Column("VQA yes/no", "mini_vqa", "", derive=vqa_by_type("yes/no")),
        Column("VQA colour/shape", "mini_vqa", "", derive=vqa_by_type("other")),
    ),
    reference="mini/lavit_table1",
    mode="claim",
    preset="mini",
    data="miniworld",
    eval_limit=MINI_EVAL_LIMIT,
    task_limits=MINI_TASK_LIMITS,
    describe="Mini world (easy-vqa shapes), zero-shot on held-out test images. Not comparable with the paper's numbers.",
    figure=_gallery,
)

# ---------------------------------------------------------------------------------------------
# The paper profile: the released checkpoint on the seven benchmarks.

PAPER = Profile(
    rows={"Ours (LLaMA-7B)": Released("lavit")},
    columns=(
        Column("Nocaps", "nocaps_val", "CIDEr"),
        Column("Flickr", "flickr30k_test", "CIDEr"),
        Column("VQAv2", "vqav2_val", "vqa_accuracy"),
        Column("OKVQA", "okvqa_val", "vqa_accuracy"),
        Column("GQA", "gqa_testdev", "gqa_accuracy"),
        Column("VizWiz", "vizwiz_val", "vqa_accuracy"),
    ),
    reference="lavit_table1",
    mode="numeric",
    preset="paper",
    data="data-root",
    eval_batch_size=16,
    describe="The released LaVIT checkpoint, zero-shot, the paper's protocol.",
)

TABLE = register_table(
    TableSpec(
        key="lavit_table1",
        script="reproduce/table1.py",
        profiles={"mini": MINI, "paper": PAPER},
        extra_references=("lavit_released",),
    )
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
