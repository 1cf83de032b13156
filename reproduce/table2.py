"""LaVIT Table 2: zero-shot text-to-image generation (FID).

    python reproduce/table2.py [--profile mini] [--check] [--update-band]
    python reproduce/table2.py --profile paper --checkpoint DIR --data-root DIR [--device cuda]

Writes `results/lavit_table2.{csv,md,png}`.

`mini` (default, CPU): Table 1's mini LaVIT (`MINI_CHAIN`, the same run directories) plus stage 1b, a pixel decoder
trained on the mini world's training images from the same stage-1a tokenizer (`STAGE_1B` in
`reproduce/mini_chain.py`: 32 px, pixel space). The unified model samples the visual tokens of one image per held-out
test caption ("a red circle."; task `mini_t2i`, the released sampling settings), the pixel decoder renders them, and
the images are compared with the real test images of the same prompts: FID and KID (torch-fidelity's InceptionV3;
the real images resized to 32 px like the decoder's training images), and the share of images that show the
prompt's colour and shape (`harness.miniworld.image_attributes`, read off the pixels). Reference rows, computed the
same way on the same prompts:

* Real train images: as many real training images (32 px) against the same test images, the floor FID/KID can
  reach at this sample count (FID is biased upwards at small counts; KID is not); its colour / shape columns are the
  pixel reader's accuracy on real images, the ceiling of those columns;
* Tokenizer codes: the pixel decoder rendering the stage-1a codes of each prompt's real test image (what the LLM
  would ideally generate; the decoder's own ceiling);
* Random codes: the pixel decoder rendering uniformly random codes, as many per image as the tokenizer keeps for
  the real one (chance: the decoder without the LLM's choice).

The claims (`results/mini/lavit_table2.yaml`) test at this scale what Table 2 presupposes: generated images are
closer to real ones than chance, and they show what the prompt asks for; each is checked for two generation
seeds of the Ours row (seed 0: the task's; seed 1: `Ours (mini LaVIT), seed 1`). The paper's claim (LaVIT beats the other
MLLMs on COCO-30k) needs the paper profile. `--check` gates on the claims, every cell measured, and the regression
band of a previous mini run (`results/mini/lavit_table2.band.json`, `--update-band`).

`paper`: the released checkpoint on MS-COCO-30k (`coco30k_fid`: 30,000 val2014 captions drawn with a fixed seed,
one sample per prompt, FID at 256 px; the paper's best-of-4 CLIP rerank is not applied, see eval/tasks.py), compared
with the printed 7.4.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.mini_chain import MINI_CHAIN_WITH_DECODER
from reproduce.table import Column, Computed, Profile, Released, TableSpec, Trained, main, register_table, evaluate_for_row

OURS = "Ours (mini LaVIT)"
OURS_SEED_1 = "Ours (mini LaVIT), seed 1"
TASK = "mini_t2i"
SAMPLES = 100  # prompts (test images) per row: Inception features cost 0.2-0.4 s per image on 2 shared cores (6 sets)
BASELINES_VERSION = 1  # bump when the baselines' images would change (their folder names carry it)
# A fixed set of prompts for the picture: every colour once, the shapes in turn, two seeds each.
GRID_PROMPTS = ("a red circle.", "a blue rectangle.", "a green triangle.", "a yellow circle.",
                "a black rectangle.", "a gray triangle.", "a brown circle.", "a teal rectangle.")  # fmt: skip
GRID_SEEDS = (0, 1)

# ---------------------------------------------------------------------------------------------
# The model of the Ours row, for the reference rows that use its pixel decoder and tokenizer.

_LOADED: dict[tuple[str, str], object] = {}


def _model(ctx):
    from model.lavit.checkpoints import load_for_eval

    runs = ctx.run_dirs[OURS]
    key = (str(runs["unified"]), str(runs["pixel_decoder"]))
    if key not in _LOADED:
        _LOADED[key] = load_for_eval(runs["unified"], device=ctx.device, pixel_decoder=runs["pixel_decoder"])
    return _LOADED[key]


def _prompts(ctx):
    from eval.tasks import get_task

    samples, root = get_task(TASK).read(ctx.data_root, ctx.profile.eval_limit)
    return samples, root


def _decoder_settings() -> dict:
    from eval.tasks import get_task

    generation = get_task(TASK).generation_for("lavit")
    return {"num_inference_steps": int(generation["num_inference_steps"]), "guidance_scale": float(generation["decoder_guidance_scale"])}


def _render(ctx, name: str, codes_for) -> Path:
    """Render one image per prompt from the codes `codes_for(model, samples, root)` returns (one LongTensor of
    codebook indices per sample), seeded per sample as the evaluation runner seeds the Ours row; cached in a folder
    of the Ours row's evaluation (its pixel decoder and tokenizer) named by `name` and the sample count."""
    import torch

    from eval.interface import EvalTask
    from eval.runner import sample_seed
    from harness.io import atomic_write_bytes
    from model.lavit.pixel_decoder import to_pil

    samples, root = _prompts(ctx)
    folder = ctx.eval_dirs[OURS] / "baselines" / f"{name}-n{len(samples)}-v{BASELINES_VERSION}"
    if len(list(folder.glob("*.png"))) == len(samples):
        return folder
    print(f"[table] render {len(samples)} images from {name} -> {folder}", flush=True)
    loaded = _model(ctx)
    model = loaded.adapter.model
    codes = codes_for(ctx)(model, samples, root)
    seed_task = EvalTask(name=TASK, kind="t2i", generation={"seed": 0})
    for start in range(0, len(samples), 16):
        batch = list(range(start, min(start + 16, len(samples))))
        ids = [model.vocab.code_to_id(codes[i]) for i in batch]
        generators = [torch.Generator().manual_seed(sample_seed(seed_task, samples[i].id)) for i in batch]
        with torch.no_grad():
            images = to_pil(model.decode_visual_ids(ids, generator=generators, **_decoder_settings()))
        for i, image in zip(batch, images):
            import io

            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(folder / f"{samples[i].id}.png", buffer.getvalue())
    return folder


def _real_codes(ctx):
    """The stage-1a codes of each prompt's real test image, selected as stage 2's data pipeline selects them (the
    unified run's `visual_selection`, per-image noise from its seed and the image id)."""

    def codes_for(model, samples, root):
        import torch
        from PIL import Image

        from harness.config import load_config
        from train.lavit.config import UnifiedStageConfig
        from train.lavit.unified import select_and_code

        cfg = load_config(UnifiedStageConfig, ctx.run_dirs[OURS]["unified"] / "config.yaml")
        tokenizer = model.visual_tokenizer
        codes = []
        for start in range(0, len(samples), 64):
            batch = samples[start : start + 64]
            pixels = tokenizer.preprocess([Image.open(root / s.image).convert("RGB") for s in batch])
            with torch.no_grad():
                _, found = select_and_code(tokenizer, pixels, [str(s.id) for s in batch], cfg.visual_selection, cfg.loop.seed)
            codes += [c.cpu() for c in found]
        empty = [s.id for s, c in zip(samples, codes) if c.numel() == 0]
        if empty:
            raise RuntimeError(f"the tokenizer keeps no token of test images {empty[:8]}: the pixel decoder cannot render them")
        return codes

    return codes_for


def _random_codes(ctx):
    """Uniformly random codebook indices, as many per image as the tokenizer keeps for its real image."""
    real = _real_codes(ctx)

    def codes_for(model, samples, root):
        import torch

        generator = torch.Generator().manual_seed(0)
        size = model.lavit_config.tokenizer.codebook_size
        return [torch.randint(0, size, (len(c),), generator=generator) for c in real(model, samples, root)]

    return codes_for


def _scores(ctx, fake: list[str], attribute_images: dict, split: str) -> dict[str, float]:
    """FID, KID x 1000 against the prompts' real test images (the Ours row's resized copies and feature cache),
    and the share of images showing the right shape / colour (labels of `split`)."""
    from eval.fid import fid_kid_files
    from harness.miniworld import image_hit_rates

    task_dir = ctx.eval_dirs[OURS] / TASK
    samples, _ = _prompts(ctx)
    real = [str(next(task_dir.glob("real*")) / f"{s.id}.png") for s in samples]
    print(f"[table] FID/KID of {len(fake)} images ({Path(fake[0]).parent.name}) against {len(real)} real test images", flush=True)
    scores = fid_kid_files(real, fake, task_dir.parent / "fid_features")
    hits = image_hit_rates(ctx.world, attribute_images, split)
    return {"FID": scores["fid"], "KID x1000": 1000 * scores["kid_mean"], "Shape shown": 100 * hits["shape"],
            "Colour shown": 100 * hits["color"]}  # fmt: skip


def _from_codes(name: str, codes_for):
    def row(ctx) -> dict[str, float]:
        samples, _ = _prompts(ctx)
        folder = _render(ctx, name, codes_for)
        files = {s.id: folder / f"{s.id}.png" for s in samples}
        return _scores(ctx, [str(f) for f in files.values()], files, "test")

    return row


def _real_train(ctx) -> dict[str, float]:
    """As many real training images as prompts, resized to the generated size like the real test images."""
    import io

    from PIL import Image

    from eval.coco30k import center_crop_resize
    from harness.io import atomic_write_bytes
    from harness.miniworld import train_images

    samples, _ = _prompts(ctx)
    size = Image.open(next((ctx.eval_dirs[OURS] / TASK / "images").glob("*.png"))).width
    folder = ctx.eval_dirs[OURS] / "baselines" / f"real-train-{size}px-n{len(samples)}"
    if len(list(folder.glob("*.png"))) != len(samples):
        for image_id, png in train_images(ctx.world, len(samples)).items():
            buffer = io.BytesIO()
            center_crop_resize(Image.open(io.BytesIO(png)), size).save(buffer, format="PNG")
            atomic_write_bytes(folder / f"{image_id}.png", buffer.getvalue())
    files = {int(p.stem): p for p in sorted(folder.glob("*.png"))}
    return _scores(ctx, [str(f) for f in files.values()], files, "train")


def _ours_with_seed(seed: int):
    """The Ours row's evaluation again with another generation seed (task mini_t2i with `seed`, evaluated into
    mini_t2i_seed<seed> beside it): the spread the claims need where a difference is small."""

    def row(ctx) -> dict[str, float]:
        import dataclasses

        from eval.tasks import get_task
        from eval.baselines import generated_hit_rate

        spec = get_task(TASK)
        spec = dataclasses.replace(spec, name=f"{TASK}_seed{seed}", generation={**spec.generation, "seed": seed},
                                   generation_by_family={"lavit": {**spec.generation_for("lavit"), "seed": seed}})
        out = ctx.eval_dirs[OURS]
        print(f"[table] evaluate {OURS!r} with generation seed {seed} -> {out / spec.name}", flush=True)
        frame = evaluate_for_row(ctx, [spec], "lavit", ctx.run_dirs[OURS]["unified"], out, limit=ctx.profile.eval_limit,
                                 batch_size=ctx.profile.eval_batch_size, loaded=_model(ctx))  # fmt: skip
        values = dict(zip(frame["metric"], frame["value"]))
        predictions = out / spec.name / "predictions.jsonl"
        return {"FID": values["FID"], "KID x1000": 1000 * values["KID"],
                "Shape shown": 100 * generated_hit_rate(ctx.world, predictions, "shape"),
                "Colour shown": 100 * generated_hit_rate(ctx.world, predictions, "color")}  # fmt: skip

    return row


def shown(attribute: str):
    """Share of the row's generated images (task mini_t2i's predictions) showing the prompt's shape / colour."""

    def derive(ctx, task_dir: Path) -> float:
        from eval.baselines import generated_hit_rate

        return generated_hit_rate(ctx.world, task_dir / "predictions.jsonl", attribute)

    return derive


# ---------------------------------------------------------------------------------------------
# The picture: the Ours row's images for a fixed set of prompts.


def _grid(ctx, path: Path) -> Path:
    from harness.miniworld import image_attributes
    from reproduce.figures import GalleryItem, gallery

    from eval.tasks import get_task

    adapter = _model(ctx).adapter
    generation = get_task(TASK).generation_for("lavit")
    items = []
    for seed in GRID_SEEDS:
        images = adapter.generate_images(list(GRID_PROMPTS), [seed * 1000 + i for i in range(len(GRID_PROMPTS))], **generation)
        for prompt, image in zip(GRID_PROMPTS, images):
            shape, color = image_attributes(image)
            want_color, want_shape = prompt.rstrip(".").split()[1:3]
            items.append(GalleryItem(image, [prompt, f"shows: {color or '-'} {shape or '-'}"], [None, (color, shape) == (want_color, want_shape)]))
    title = f"mini LaVIT text-to-image, {len(GRID_SEEDS)} seeds per prompt (green: the pixels show the prompt's colour and shape)"
    return gallery(items, path, columns=len(GRID_PROMPTS), cell=96, title=title)


# ---------------------------------------------------------------------------------------------
# Declarations.

MINI = Profile(
    rows={
        OURS: Trained("lavit", MINI_CHAIN_WITH_DECODER, load_with=(("pixel_decoder", "pixel_decoder"),)),
        OURS_SEED_1: Computed(_ours_with_seed(1), "the same model, generation seed 1"),
        "Tokenizer codes (decoder ceiling)": Computed(_from_codes("tokenizer-codes", _real_codes), "the pixel decoder on the real test image's stage-1a codes"),
        "Random codes (chance)": Computed(_from_codes("random-codes", _random_codes), "the pixel decoder on uniformly random codes"),
        "Real train images": Computed(_real_train, "real training images against the real test images"),
    },
    columns=(
        Column("FID", TASK, "FID"),
        Column("KID x1000", TASK, "KID", scale=1000.0),
        Column("Shape shown", TASK, "", scale=100.0, derive=shown("shape")),
        Column("Colour shown", TASK, "", scale=100.0, derive=shown("color")),
    ),
    reference="mini/lavit_table2",
    eval_limit=SAMPLES,
    describe=f"Mini world, text-to-image from {SAMPLES} held-out test captions; FID/KID against their real test images (32 px). "
             "Not comparable with the paper's COCO-30k numbers.",
    figure=_grid,
    # FID/KID from 100 samples move by several points with the decoder's training noise; hit rates by a few %.
    band_rules={"FID": BandRule(relative=0.25, floor=10.0), "KID x1000": BandRule(relative=0.25, floor=10.0),
                "Shape shown": BandRule(relative=0.1, floor=8.0), "Colour shown": BandRule(relative=0.1, floor=8.0)},
)

PAPER = Profile(
    rows={"Ours (LLaMA-7B)": Released("lavit")},
    columns=(Column("FID", "coco30k_fid", "FID"),),
    reference="lavit_table2",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="The released LaVIT checkpoint on MS-COCO-30k (one sample per prompt; no CLIP rerank).",
)

TABLE = register_table(TableSpec(key="lavit_table2", script="reproduce/table2.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
