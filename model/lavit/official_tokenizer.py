"""Load (and write) the released LaVIT visual tokenizer files.

Layout of the ``visual_tokenizer/`` folder of a LaVIT checkpoint directory:

    eva_vitg_psz14.bin      EVA-CLIP ViT-g weights            keys ``cls_token, blocks.0.attn.qkv.weight, ...``
                                                             (accepted with or without an ``encoder.`` prefix)
    tokenizer_encoder.bin   selector, merger, quantizer,      keys ``token_predictor.*, causal_encoder.*,
                            encode_task_layer, vit_proj       quantize.embedding.weight, encode_task_layer.*,
                                                             vit_proj.*`` (may also hold ``encoder.*``)
    tokenizer_decoder.bin   feature decoder                   keys ``pos_embed, query_embed, in_proj.*, blocks.*,
                                                             norm.*, decode_task_layer.*, unet_proj.*``

Each file may instead be a ``.safetensors`` twin (same stem). Files are read and checked strictly with
``model/weights.py``: a file whose keys do not match gets an error naming the file and listing exactly which keys
are missing, unexpected or mis-shaped (first few + counts). Encoder weights load first, then the tokenizer weights
(so ``encoder.*`` keys in ``tokenizer_encoder.bin`` win), then the decoder, then optional extra files such as the
released ``language_model/visual_weight.bin`` (the merger fine-tuned with the LLM for understanding).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from model.lavit.tokenizer_config import VisualTokenizerConfig
from model.weights import check_state_dict, read_state_dict, resolve_file, strip_prefix

if TYPE_CHECKING:  # the model module imports transformers; keep `--help` instant
    from model.lavit.tokenizer import DynamicVisualTokenizer

EVA_FILE = "eva_vitg_psz14.bin"
TOKENIZER_ENCODER_FILE = "tokenizer_encoder.bin"
TOKENIZER_DECODER_FILE = "tokenizer_decoder.bin"
WHAT = "the LaVIT visual tokenizer"  # names the model in layout errors
def visual_tokenizer_dir(directory: str | Path) -> Path:
    """Accept either the LaVIT checkpoint root or its ``visual_tokenizer/`` folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"LaVIT checkpoint directory not found: {directory}")
    nested = directory / "visual_tokenizer"
    return nested if nested.is_dir() else directory


def load_official_visual_tokenizer(
    directory: str | Path,
    cfg: VisualTokenizerConfig | None = None,
    *,
    load_decoder: bool = True,
    extra_weight_files: tuple[str | Path, ...] = (),
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DynamicVisualTokenizer:
    """Build the tokenizer on the meta device and fill it from the released files (strict key and shape checks),
    each tensor put straight on `device` in `dtype` (the selector stays float32: `model.lavit.precision`).

    ``load_decoder=False`` skips ``tokenizer_decoder.bin`` (the decoder then keeps a fresh random init).
    ``extra_weight_files`` are applied last; their keys must be tokenizer keys (e.g. ``visual_weight.bin``).
    """
    from harness.config import get_preset
    from model.lavit.precision import convert_state, float32_prefixes, place
    from model.lavit.tokenizer import DynamicVisualTokenizer

    cfg = cfg or get_preset("lavit_tokenizer", "paper")
    if cfg.encoder != "eva_vit_g":
        raise ValueError(f"the released tokenizer uses the EVA ViT-g encoder; cfg.encoder is {cfg.encoder!r}")
    folder = visual_tokenizer_dir(directory)
    with torch.device("meta"):
        tok = DynamicVisualTokenizer(cfg)
    expected = {k: v.shape for k, v in tok.state_dict().items()}
    encoder_keys = {k for k in expected if k.startswith("encoder.")}
    decoder_keys = {k for k in expected if k.startswith("decoder.")}
    middle_keys = set(expected) - encoder_keys - decoder_keys

    # Every file is checked, then its tensors are put on `device` in their final dtype (the selector's float32,
    # `model.lavit.precision`) before the next file is read: no copy of the whole tokenizer in another dtype.
    prefixes = float32_prefixes(tok)
    merged: dict[str, torch.Tensor] = {}
    # 1) EVA encoder.
    path = resolve_file(folder / EVA_FILE)
    eva = {f"encoder.{k}": v for k, v in strip_prefix(read_state_dict(path), "encoder.").items()}
    check_state_dict(path, eva, expected, required=encoder_keys, what=WHAT)
    merged.update(convert_state(eva, device, dtype, prefixes))
    del eva
    # 2) Tokenizer encoder side (selector, merger, quantizer, task layer, vit_proj; encoder.* optional).
    path = resolve_file(folder / TOKENIZER_ENCODER_FILE)
    state = read_state_dict(path)
    allowed = {k: s for k, s in expected.items() if k in middle_keys or k in encoder_keys}
    check_state_dict(path, state, allowed, required=middle_keys, what=WHAT)
    merged.update(convert_state(state, device, dtype, prefixes))
    # 3) Decoder.
    if load_decoder:
        path = resolve_file(folder / TOKENIZER_DECODER_FILE)
        dec = {f"decoder.{k}": v for k, v in strip_prefix(read_state_dict(path), "decoder.").items()}
        check_state_dict(path, dec, expected, required=decoder_keys, what=WHAT)
        merged.update(convert_state(dec, device, dtype, prefixes))
        del dec
    # 4) Extra files (subset of the tokenizer keys).
    for extra in extra_weight_files:
        path = resolve_file(extra)
        state = read_state_dict(path)
        check_state_dict(path, state, expected, required=(), what=WHAT)
        merged.update(convert_state(state, device, dtype, prefixes))
    del state

    if load_decoder:
        tok.load_state_dict(merged, strict=True, assign=True)
    else:
        result = tok.load_state_dict(merged, strict=False, assign=True)
        assert not result.unexpected_keys and set(result.missing_keys) == decoder_keys, result
        tok.decoder.to_empty(device=device)
        tok.decoder.apply(tok._init_weights)  # fresh decoder, as a newly built tokenizer would have
        place(tok.decoder, device, dtype)
    del merged
    if cfg.freeze_encoder:
        tok.encoder.requires_grad_(False)
    if cfg.codebook_use_ema:
        tok.quantize.embedding.weight.requires_grad_(False)
    tok.quantize.reset_ema()
    return tok.eval()


def _save_tensors(path: Path, state: dict[str, torch.Tensor], safetensors: bool) -> Path:
    from harness.io import atomic_write_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if safetensors:
        from safetensors.torch import save

        return atomic_write_bytes(path.with_suffix(".safetensors"), save(state))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_official_layout(
    tok: DynamicVisualTokenizer,
    directory: str | Path,
    *,
    encoder_in_tokenizer_file: bool = False,
    safetensors: bool = False,
) -> Path:
    """Write ``tok`` as ``<directory>/visual_tokenizer/{eva_vitg_psz14,tokenizer_encoder,tokenizer_decoder}.bin``.

    Returns the ``visual_tokenizer`` folder. ``encoder_in_tokenizer_file`` also copies ``encoder.*`` into
    ``tokenizer_encoder.bin`` (the released file may or may not hold them).
    """
    if tok.cfg.encoder != "eva_vit_g":
        raise ValueError("the official layout holds an EVA ViT encoder; this tokenizer uses " + tok.cfg.encoder)
    folder = Path(directory) / "visual_tokenizer"
    state = tok.state_dict()
    eva = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    dec = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    middle = {
        k: v
        for k, v in state.items()
        if not k.startswith("decoder.") and (encoder_in_tokenizer_file or not k.startswith("encoder."))
    }
    _save_tensors(folder / EVA_FILE, eva, safetensors)
    _save_tensors(folder / TOKENIZER_ENCODER_FILE, middle, safetensors)
    _save_tensors(folder / TOKENIZER_DECODER_FILE, dec, safetensors)
    return folder


def main(argv: list[str] | None = None) -> None:
    """Load a released tokenizer and tokenize images: prints the kept-patch grid, token count and codes."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="LaVIT checkpoint root or its visual_tokenizer/ folder")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--selection", choices=["deterministic", "sampled"], default="deterministic")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Gumbel noise for --selection sampled")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    import model.lavit.tokenizer_config as presets
    from harness.config import add_config_arguments, config_from_args

    add_config_arguments(parser, presets.PRESET_GROUP, default="paper")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, presets.PRESET_GROUP)

    from PIL import Image

    tok = load_official_visual_tokenizer(args.checkpoint, cfg, dtype=getattr(torch, args.dtype), device=args.device)
    pixels = tok.preprocess([Image.open(path) for path in args.images])
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        out = tok.tokenize(pixels, selection=args.selection, generator=generator)
    side = tok.cfg.grid_size
    for path, keep, codes in zip(args.images, out.keep_mask, out.codes):
        print(f"{path}: {len(codes)} visual tokens of {tok.cfg.num_patches} patches")
        for row in keep.view(side, side).tolist():
            print("  " + "".join("#" if k else "." for k in row))
        print("  codes:", " ".join(str(c) for c in codes.tolist()))


if __name__ == "__main__":
    main()
