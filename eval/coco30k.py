"""The MS-COCO-30k zero-shot text-to-image protocol (LaVIT Table 2): prompts, real images, best-of-4 CLIP reranking.

    python -m eval.coco30k sample  --captions captions_val2014.json --out prompts.jsonl [--num 30000] [--seed 0]
    python -m eval.coco30k prepare --images val2014/ --prompts prompts.jsonl --out real256/ [--size 256]
    python -m eval.coco30k resize  --images generated/ --out fake256/ [--size 256]
    python -m eval.coco30k rerank  --clip CLIP_DIR --prompts prompts.jsonl --candidates gen/ --out best/ [--k 4]
    python -m eval.fid --real real256/ --fake fake256/ --json

Protocol, as implemented here:
- Prompts: 30,000 captions from COCO val2014 (the official `captions_val2014.json`), one per image: the images that
  have captions are sorted by id, `random.Random(seed).sample` picks 30,000 of them, then the same generator picks one
  of each image's captions (captions sorted by annotation id). Fixed seed (default 0) -> identical prompt file.
  LaVIT (Sec. 4.2) says only "we randomly sample 30k text prompts" from the MS-COCO validation set.
- Real images: the 30,000 selected val2014 images, center-cropped to a square and resized to 256x256 (bicubic).
  256x256 is our choice: it is the resolution at which the zero-shot COCO-30k FID numbers that LaVIT compares with
  are usually reported (e.g. Parti, Make-A-Scene); LaVIT does not state one. Generated images go through the same
  `resize` step, so both sides reach torch-fidelity's extractor (which resizes to 299) identically.
- Best-of-4: LaVIT generates 4 images per prompt and keeps the one a CLIP ViT-L model scores highest against the prompt
  (Appendix A). `rerank` does that with any transformers `CLIPModel` + `CLIPProcessor` folder (save_pretrained).
  Candidate files are `{index:05d}_{k}.png` (k = 0..K-1); the chosen one is written as `{index:05d}.png`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from eval.errors import EvalInputError, run_cli

DEFAULT_NUM_PROMPTS = 30_000
DEFAULT_SEED = 0
DEFAULT_SIZE = 256
DEFAULT_CANDIDATES = 4


def sample_prompts(captions_json: str | Path, num: int = DEFAULT_NUM_PROMPTS, seed: int = DEFAULT_SEED) -> list[dict]:
    """`num` (image, caption) pairs from a COCO captions file: distinct images, one caption each, fixed seed."""
    path = Path(captions_json)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file not found: {path} (expected annotations/captions_val2014.json)")
    data = json.loads(path.read_text())
    if "images" not in data or "annotations" not in data:
        raise EvalInputError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    file_names = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[int, list[dict]] = {}
    for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
        captions.setdefault(annotation["image_id"], []).append(annotation)
    image_ids = sorted(captions)
    if num > len(image_ids):
        raise EvalInputError(f"{path} has captions for {len(image_ids)} images; cannot sample {num} distinct images")
    rng = random.Random(seed)
    prompts = []
    for index, image_id in enumerate(rng.sample(image_ids, num)):
        annotation = rng.choice(captions[image_id])
        prompts.append({
            "index": index,
            "image_id": image_id,
            "file_name": file_names[image_id],
            "annotation_id": annotation["id"],
            "caption": annotation["caption"].strip(),
        })
    return prompts


def write_prompts(path: str | Path, prompts: list[dict]) -> Path:
    from harness.io import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in prompts))


def read_prompts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path} (make it with `python -m eval.coco30k sample`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def center_crop_resize(image, size: int = DEFAULT_SIZE):
    """Central square crop, then bicubic resize to size x size (RGB)."""
    from PIL import Image

    image = image.convert("RGB")
    side = min(image.width, image.height)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def _resize_files(pairs: list[tuple[Path, Path]], size: int) -> None:
    from PIL import Image

    for source, target in pairs:
        with Image.open(source) as image:
            out = center_crop_resize(image, size)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")  # not *.png: FID never reads a half-written file
        out.save(tmp, format="PNG")
        tmp.replace(target)


def prepare_real_images(images_dir: str | Path, prompts: list[dict], out_dir: str | Path, size: int = DEFAULT_SIZE) -> int:
    """Center-crop + resize the prompts' val2014 images into out_dir as `{index:05d}.png`; returns the count."""
    root, out = Path(images_dir), Path(out_dir)
    pairs = [(root / p["file_name"], out / f"{p['index']:05d}.png") for p in prompts]
    missing = [str(source) for source, _ in pairs if not source.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(pairs)} COCO images missing under {root}, e.g. {missing[:3]}")
    _resize_files([(s, t) for s, t in pairs if not t.is_file()], size)  # resumable: existing outputs are kept as they are
    return len(pairs)


def resize_folder(images_dir: str | Path, out_dir: str | Path, size: int = DEFAULT_SIZE) -> int:
    """Apply the same center-crop + resize to every png/jpg in a folder (e.g. generated images)."""
    root, out = Path(images_dir), Path(out_dir)
    sources = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not sources:
        raise FileNotFoundError(f"no png/jpg images in {root}")
    _resize_files([(s, out / (s.stem + ".png")) for s in sources], size)
    return len(sources)


class ClipReranker:
    """Scores images against a caption with a CLIP model and picks the best (LaVIT's best-of-4)."""

    def __init__(self, clip_dir: str | Path, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(clip_dir)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"CLIP folder {folder} has no config.json (save a CLIPModel with save_pretrained)")
        if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            raise FileNotFoundError(
                f"CLIP folder {folder} has no preprocessor_config.json / processor_config.json (save the CLIPProcessor too)"
            )
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.max_text_tokens = self.model.config.text_config.max_position_embeddings

    def similarities(self, caption: str, images: list) -> "torch.Tensor":
        """Cosine similarity (k,) between the caption and each image."""
        import torch

        inputs = self.processor(
            text=[caption], images=images, return_tensors="pt", padding=True, truncation=True,
            max_length=self.max_text_tokens,
        ).to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        # text_embeds / image_embeds are L2-normalised projections: their dot product is the cosine.
        return (out.image_embeds @ out.text_embeds[0]).float().cpu()  # (k,)

    def best(self, caption: str, images: list) -> tuple[int, list[float]]:
        scores = self.similarities(caption, images)
        return int(scores.argmax()), scores.tolist()


def rerank_folder(
    clip_dir: str | Path,
    prompts: list[dict],
    candidates_dir: str | Path,
    out_dir: str | Path,
    num_candidates: int = DEFAULT_CANDIDATES,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """For each prompt keep the CLIP-best of `{index:05d}_{k}.png`, copied to out_dir/`{index:05d}.png`."""
    from PIL import Image

    from harness.io import atomic_write_json

    reranker = ClipReranker(clip_dir, device)
    root, out = Path(candidates_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selections = []
    for prompt in prompts:
        paths = [root / f"{prompt['index']:05d}_{k}.png" for k in range(num_candidates)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"prompt {prompt['index']}: candidates {missing} missing in {root}")
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        best, scores = reranker.best(prompt["caption"], images)
        shutil.copyfile(paths[best], out / f"{prompt['index']:05d}.png")
        selections.append({"index": prompt["index"], "best": best, "clip_cosine": scores})
    atomic_write_json(out / "selection.json", {"clip": str(Path(clip_dir).resolve()), "selections": selections})
    return selections


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.coco30k", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample the prompt file from captions_val2014.json")
    p.add_argument("--captions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=DEFAULT_NUM_PROMPTS)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p = sub.add_parser("prepare", help="center-crop + resize the prompts' real images")
    p.add_argument("--images", required=True, help="the val2014/ image folder")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p = sub.add_parser("resize", help="center-crop + resize a folder of generated images")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p = sub.add_parser("rerank", help="keep the CLIP-best of K candidates per prompt")
    p.add_argument("--clip", required=True, help="folder with a saved CLIPModel + CLIPProcessor")
    p.add_argument("--prompts", required=True)
    p.add_argument("--candidates", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=DEFAULT_CANDIDATES)
    p.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        prompts = sample_prompts(args.captions, args.num, args.seed)
        write_prompts(args.out, prompts)
        print(f"wrote {len(prompts)} prompts (seed {args.seed}) to {args.out}")
    elif args.command == "prepare":
        count = prepare_real_images(args.images, read_prompts(args.prompts), args.out, args.size)
        print(f"{count} real images at {args.size}x{args.size} in {args.out}")
    elif args.command == "resize":
        count = resize_folder(args.images, args.out, args.size)
        print(f"{count} images at {args.size}x{args.size} in {args.out}")
    else:
        selections = rerank_folder(args.clip, read_prompts(args.prompts), args.candidates, args.out, args.k, args.device)
        print(f"selected best of {args.k} for {len(selections)} prompts into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
