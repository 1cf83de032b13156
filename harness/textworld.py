"""The mini world with text in its images: the mini TextVQA (VILA Table 7, "image resolution matters").

    python -m harness.textworld --root DIR [--base DIR] [--seed 0]

TextVQA asks about text in the image, often text small enough that CLIP at 224 px reads it worse than at 336 px
(VILA §4.4: 41.6 % -> 49.8 %). The mini counterpart: every image of the mini world (train and test) gets a white
banner across its top with one digit printed along it, in a 5x7-pixel font at one of two sizes (GLYPH_SCALES):
"small", 1-pixel strokes on the 64x64 image (3.75 x 5.25 px at the mini VILA's 48 px, 2.5 x 3.5 px at 32 px, its
224-px analogue), or "large", twice that. Half of the images carry each size.

Why a banner and not one tag: the mini VILA's LLM reads its image tokens about uniformly (on a first build with one
small tag in the top-left corner, the answer position put 0.05-1 % of its attention on the tag's token, below the
uniform 2.8 %; a linear probe read the digit from that token's projector output at 91 %, from the answer position
at 13 %, and the model answered at chance, 10 %, after 1,000 or 3,000 SFT steps at LR 2e-4 or 1e-3). Printed along a
banner, the digit is in a whole row of tokens, as an image's colour is in many.

Built from a mini world (`harness.miniworld.build_miniworld`, the same seed, images, questions and corpus) into its
own root with its own build hash, so no run of the plain world is touched. What changes:

    images              every train and test image with its banner (the shards' PNGs, images/test, images/train)
    shards/train-*.tar  the plain world's samples, plus per train image two captions that name its digit and one
                        question that asks it (kinds "caption" / "vqa", as the others: the tower's contrastive
                        pre-training, the interleaved documents and the SFT conversations all see them), reshuffled
    eval/captions_*.json  each image's references gain the digit captions (they are how its train images are described)
    textvqa/TextVQA_0.5.1_val.json   one question per test image asking its digit, the official TextVQA 0.5.1 fields
                                     (read by `eval.tasks` textvqa_val, the real benchmark's reader)
    textvqa/train_images/<id>.jpg    the test images, JPEG (quality 95, no chroma subsampling), where TextVQA keeps them
    miniworld.json      + "digits" / "digit_sizes": split -> image id -> digit / size, + "textworld": the build parameters

The colour / shape questions (eval/vqa_test_*.json) are the plain world's, on the bannered images (the banner covers
part of the shape in about a third of them: counts banners_over_shape_*).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

from harness.errors import InputError
from harness.io import atomic_write_bytes, atomic_write_json
from harness.miniworld import SAMPLES_PER_SHARD, VQA_PROMPT, MiniWorld, build_miniworld, load_miniworld

TEXT_FORMAT_VERSION = 1
# 5x7 digits, 1-pixel strokes (the classic LCD/dot-matrix shapes).
FONT_5X7 = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}
DIGITS = tuple(FONT_5X7)
BANNER_TOP = 1  # the banner's first row (row 0 stays background: the reference colour for "covers the shape")
# Text comes in two sizes, as TextVQA's does: "small" (the 5x7 font as drawn, 1-pixel strokes: 3.75 x 5.25 px at 48 px,
# 2.5 x 3.5 px at 32 px) and "large" (each font pixel 2x2: 10x14, 2-pixel strokes, legible at either resolution),
# half of the images each. The large digits are what a model can learn to read at all; the small ones are where
# the resolution can matter.
GLYPH_SCALES = {"small": 1, "large": 2}
INK, PAPER = (20, 20, 20), (255, 255, 255)
DIGIT_CAPTIONS = ("a {color} {shape} under a banner with the number {d}.", "the number {d} is printed on a banner.")
DIGIT_QUESTIONS = ("what number is written on the banner?", "what number is on the banner?", "which number does the banner show?",
                   "what is the number in the image?")  # fmt: skip
TEXTVQA_VAL = "textvqa/TextVQA_0.5.1_val.json"
TEXTVQA_IMAGES = "textvqa/train_images"  # the release keeps its val images in the train folder


def text_of(seed: int, split: str, image_id: int | str) -> tuple[str, str]:
    """(digit, size) of an image's banner: uniform over 0-9 and over GLYPH_SCALES, a pure function of (seed, split,
    image id)."""
    rng = random.Random(f"{seed}/textworld/{split}/{image_id}")
    return rng.choice(DIGITS), rng.choice(sorted(GLYPH_SCALES))


def with_banner(image, digit: str, size: str = "small"):
    """A copy of the RGB PIL image with a white banner across its top (rows BANNER_TOP .. BANNER_TOP + 9 s, s the
    font scale of `size`) and the digit printed along it every 7 s pixels; also returns whether the banner covers any
    pixel of the shape (a pixel unlike the image's corner, which is background in every easy-VQA image here)."""
    import numpy as np
    from PIL import Image

    pixels = np.array(image.convert("RGB"))
    scale = GLYPH_SCALES[size]
    glyph = np.kron(np.array([[bit == "1" for bit in row] for row in FONT_5X7[digit]]), np.ones((scale, scale), dtype=bool))
    banner = pixels[BANNER_TOP : BANNER_TOP + glyph.shape[0] + 2 * scale]
    covers_shape = bool((np.abs(banner.astype(int) - pixels[0, 0].astype(int)).sum(-1) > 30).any())
    banner[:] = PAPER
    for x in range(scale, pixels.shape[1] - glyph.shape[1] + 1, 7 * scale):
        banner[scale : scale + glyph.shape[0], x : x + glyph.shape[1]][glyph] = INK
    return Image.fromarray(pixels), covers_shape


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _png_with_banner(png: bytes, text: tuple[str, str]) -> tuple[bytes, bool]:
    from PIL import Image

    image, covers = with_banner(Image.open(io.BytesIO(png)), *text)
    return _png(image), covers


def _read_shards(root: Path) -> list[tuple[bytes, str, dict]]:
    """Every (png, text, meta) sample of a world's shards, in shard and key order."""
    samples = []
    for shard in sorted((root / "shards").glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            parts = members[key]
            samples.append((parts["png"], parts["txt"].decode(), json.loads(parts["json"])))
    return samples


def _write_shards(root: Path, samples: list[tuple[bytes, str, dict]]) -> int:
    from harness.miniworld import _write_shard

    for n, first in enumerate(range(0, len(samples), SAMPLES_PER_SHARD)):
        chunk = samples[first : first + SAMPLES_PER_SHARD]
        _write_shard(root / "shards" / f"train-{n:04d}.tar", [(f"{first + k:07d}", png, text, meta) for k, (png, text, meta) in enumerate(chunk)])
    return -(-len(samples) // SAMPLES_PER_SHARD)


def _eval_split_with_banners(base: Path, root: Path, name: str, texts: dict[str, tuple[str, str]], labels: dict[str, list[str]]) -> int:
    """images/<name>/ with banners and eval/captions_<name>.json with the digit captions added; returns the number of
    banners over a shape."""
    covered = 0
    (root / "images" / name).mkdir(parents=True, exist_ok=True)
    for path in sorted((base / "images" / name).glob("*.png")):
        png, covers = _png_with_banner(path.read_bytes(), texts[path.stem])
        covered += covers
        atomic_write_bytes(root / "images" / name / path.name, png)
    captions = json.loads((base / "eval" / f"captions_{name}.json").read_text())
    for image in captions["images"]:
        i = str(image["imgid"])
        shape, color = labels[i]
        for template in DIGIT_CAPTIONS:
            raw = template.format(color=color, shape=shape, d=texts[i][0])
            image["sentences"].append({"raw": raw, "tokens": [t.strip(".") for t in raw.split()]})
    atomic_write_json(root / "eval" / f"captions_{name}.json", captions)
    return covered


def _write_textvqa(root: Path, digits: dict[str, str], seed: int) -> int:
    """The TextVQA 0.5.1 val file (one question per test image) and its JPEG images."""
    from PIL import Image

    rng = random.Random(f"{seed}/textworld/textvqa")
    (root / TEXTVQA_IMAGES).mkdir(parents=True, exist_ok=True)
    records = []
    for i in sorted(digits, key=int):
        image = Image.open(root / "images" / "test" / f"{i}.png").convert("RGB")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=95, subsampling=0)
        atomic_write_bytes(root / TEXTVQA_IMAGES / f"{i}.jpg", out.getvalue())
        records.append({"question_id": int(i), "image_id": str(i), "question": rng.choice(DIGIT_QUESTIONS),
                        "answers": [digits[i]] * 10, "image_classes": ["banner"], "set_name": "val",
                        "image_width": image.width, "image_height": image.height, "flickr_original_url": "",
                        "flickr_300k_url": "", "image_bucket": "miniworld"})  # fmt: skip
    atomic_write_json(root / TEXTVQA_VAL, {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                           "data": records})  # fmt: skip
    return len(records)


def build_textworld(root: str | Path, base: str | Path, *, seed: int = 0, log: Callable[[str], None] | None = None) -> MiniWorld:
    """Build the text world into `root` from the mini world at `base` (built there with the defaults if absent), or return the
    one already at `root` if it was built from the same base and seed."""
    root, log = Path(root), log or (lambda _msg: None)
    base = Path(base)
    if not (base / "DONE").is_file():  # a base that is there is used as built (any build parameters)
        build_miniworld(base)
    base_hash = json.loads((base / "DONE").read_text())["hash"]
    params = {"text_format_version": TEXT_FORMAT_VERSION, "seed": seed, "base": base_hash}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    if (root / "DONE").is_file():
        done = json.loads((root / "DONE").read_text())
        if done.get("hash") != digest:
            raise InputError(f"{root} holds a text world built with {done.get('params')}, asked for {params}: use another root or delete this one")
        return load_miniworld(root)
    if root.resolve() == base.resolve():
        raise InputError(f"the text world's root {root} is its base world's: use another root")
    for part in ("shards", "text", "knowledge", "eval", "images", "tokenizer", "textvqa"):  # an interrupted build's leftovers
        shutil.rmtree(root / part, ignore_errors=True)
    start = time.perf_counter()
    step = lambda msg: log(f"[{time.perf_counter() - start:5.1f}s] {msg}")  # noqa: E731

    meta = json.loads((base / "miniworld.json").read_text())
    texts = {split: {i: text_of(seed, split, i) for i in meta["labels"][split]} for split in ("train", "test")}
    digits = {split: {i: d for i, (d, _) in texts[split].items()} for split in texts}
    samples, bannered, covered, extra = [], {}, 0, []
    for png, text, info in _read_shards(base):
        i = str(info["image_id"])
        if i not in bannered:
            bannered[i], covers = _png_with_banner(png, texts["train"][i])
            covered += covers
        samples.append((bannered[i], text, {**info, "digit": digits["train"][i]}))
    rng = random.Random(f"{seed}/textworld/shards")
    for i in sorted(bannered, key=int):
        shape, color = meta["labels"]["train"][i]
        info = {"image_id": int(i), "split": "train", "shape": shape, "color": color, "digit": digits["train"][i]}
        for template in DIGIT_CAPTIONS:
            extra.append((bannered[i], template.format(color=color, shape=shape, d=digits["train"][i]), {**info, "kind": "caption"}))
        q = rng.choice(DIGIT_QUESTIONS)
        extra.append((bannered[i], VQA_PROMPT.format(q=q, a=digits["train"][i]), {**info, "kind": "vqa", "question": q, "answer": digits["train"][i]}))
    samples += extra
    rng.shuffle(samples)
    shards = _write_shards(root, samples)
    step(f"printed banners on {len(bannered)} train images ({covered} over the shape); {len(samples)} samples ({len(extra)} about the digit) in {shards} shards")

    for part in ("text", "knowledge", "tokenizer"):
        shutil.copytree(base / part, root / part)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for name in ("vqa_test_questions.json", "vqa_test_annotations.json", "vqa_train_questions.json", "vqa_train_annotations.json"):
        shutil.copyfile(base / "eval" / name, root / "eval" / name)
    test_covered = _eval_split_with_banners(base, root, "test", texts["test"], meta["labels"]["test"])
    _eval_split_with_banners(base, root, "train", texts["train"], meta["labels"]["train"])  # the in-context demonstration pool
    n_textvqa = _write_textvqa(root, digits["test"], seed)
    step(f"printed banners on {len(digits['test'])} test images ({test_covered} over the shape); wrote {n_textvqa} TextVQA questions")

    meta["counts"] = {**meta["counts"], "train_samples": len(samples), "shards": shards, "digit_samples": len(extra),
                      "banners_over_shape_train": covered, "banners_over_shape_test": test_covered, "textvqa_questions": n_textvqa}  # fmt: skip
    meta["digits"], meta["textworld"] = digits, params
    meta["digit_sizes"] = {split: {i: size for i, (_, size) in texts[split].items()} for split in texts}
    atomic_write_json(root / "miniworld.json", meta)
    atomic_write_json(root / "DONE", {"hash": digest, "params": params})
    step("done")
    return load_miniworld(root)


def digit_labels(world: MiniWorld, split: str, what: str = "digits") -> dict[str, str]:
    """Image id -> the digit on its banner (what="digits") or its size (what="digit_sizes": "small" / "large"), for a
    text world (an error naming the root for a plain one)."""
    labels = json.loads((Path(world.root) / "miniworld.json").read_text()).get(what)
    if not labels:
        raise InputError(f"{world.root} is a plain mini world: it has no {what} (build one with python -m harness.textworld)")
    return labels[split]


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.textworld`: bad input is one `error:` line and exit code 2 (`harness.errors.run_cli`)."""
    from harness.errors import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.textworld", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="directory to build the text world into (reused when already built)")
    parser.add_argument("--base", default=None, help="the plain mini world it starts from (built there if absent; default: ROOT/../miniworld)")
    parser.add_argument("--seed", type=int, default=0, help="which digit each image gets")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    base = args.base or str(Path(args.root).resolve().parent / "miniworld")
    world = build_textworld(args.root, base, seed=args.seed, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"text world at {world.root} ({time.perf_counter() - start:.1f}s)")
    for key, value in world.counts.items():
        print(f"  {key:26s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
