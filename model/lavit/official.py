"""Load (and write) a whole released LaVIT checkpoint directory.

Layout (a local directory; nothing is downloaded):

    language_model/      HF LlamaForCausalLM: config.json, weights (pytorch_model*.bin or model*.safetensors,
                         sharded with an *.index.json or single), the text tokenizer (SentencePiece's
                         tokenizer.model, as released, or a transformers tokenizer.json), and
                         visual_weight.bin: the LLM-tuned `causal_encoder.*` + `vit_proj.*` (understanding path)
    visual_tokenizer/    eva_vitg_psz14.bin, tokenizer_encoder.bin, tokenizer_decoder.bin
                         (read by `official_tokenizer.load_official_visual_tokenizer`)
    pixel_decoding/      diffusers folders vae/, unet/, scheduler/ and uncond_embeddings.bin
    lavit_config.yaml    (our addition, not in the release) the `LavitConfig` of a model written by
                         `write_official_layout`, so that `model.lavit.checkpoints.load_for_eval` can rebuild a
                         model of any size from the directory alone; the released 7B has none (-> `lavit-7b`)

Order (as released): the tokenizer's encoder weights first; the understanding merger starts as a copy of the
tokenizer's `causal_encoder` / `vit_proj` and is then overridden by `visual_weight.bin`. Every file is checked
strictly: a missing folder or file is a FileNotFoundError naming its path, a key mismatch a CheckpointLayoutError
naming the file and exactly which keys are missing / unexpected, a shape mismatch names the keys and both shapes.
The only keys tolerated without being in the model are rotary `inv_freq` buffers that old transformers versions
saved (they are recomputed from the config); the report lists them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import InputError
from model.lavit.configuration import LavitConfig
from model.lavit.official_tokenizer import load_official_visual_tokenizer
from model.lavit.official_tokenizer import write_official_layout as write_official_tokenizer_layout
from model.weights import (
    CheckpointLayoutError,
    check_state_dict,
    read_state_dict,
    resolve_file,
    sharded_weight_files,
    sharded_weight_shapes,
)

LANGUAGE_MODEL = "language_model"
VISUAL_TOKENIZER = "visual_tokenizer"
PIXEL_DECODING = "pixel_decoding"
VISUAL_WEIGHT_FILE = "visual_weight.bin"
UNCOND_FILE = "uncond_embeddings.bin"
CONFIG_FILE = "lavit_config.yaml"  # our addition (see the module docstring)
TOLERATED_SUFFIXES = ("rotary_emb.inv_freq",)  # saved by transformers < 4.31, recomputed from the config
# LlamaConfig fields that must agree between language_model/config.json and our config.
CHECKED_LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "rms_norm_eps",
)


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)  # every weights file read, in order
    ignored_keys: list[str] = field(default_factory=list)  # tolerated keys that are not model parameters


@dataclass
class LoadedLavit:
    model: Any  # LavitForCausalLM
    text_tokenizer: Any  # transformers tokenizer from language_model/
    report: LoadReport


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"LaVIT checkpoint folder not found: {path}")
    return path


def _expected(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------------------
# language_model/


def check_llm_config(folder: Path, config: LavitConfig) -> None:
    from model.lavit.modeling_lavit import llama_config

    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"LLM config not found: {path}")
    found = json.loads(path.read_text())
    ours = llama_config(config).to_dict()
    diffs = {k: (found.get(k), ours[k]) for k in CHECKED_LLAMA_FIELDS if found.get(k) != ours[k]}
    if diffs:
        raise InputError(f"{path} disagrees with the LaVIT config (checkpoint, config): {diffs}")


def load_text_tokenizer(folder: Path):
    """`model.text_tokenizer.load_text_tokenizer`: SentencePiece `tokenizer.model` (as released) or `tokenizer.json`."""
    from model.text_tokenizer import load_text_tokenizer as load

    return load(folder)


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_official_lavit(
    directory: str | Path,
    config: LavitConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedLavit:
    """Build LaVIT from a released checkpoint directory (strict). `config` defaults to the `lavit-7b` preset.

    Built on the meta device; every weight file is read one at a time and its tensors go straight to `device` in
    `dtype`, except the float32 parts (selector, rotary frequencies: `model.lavit.precision`)."""
    from harness.config import get_preset
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.precision import convert_state, float32_prefixes, place, rebuild_rotary

    root = _require_dir(Path(directory))
    config = config or get_preset("lavit", "lavit-7b")
    # The checkpoint holds the trained pixel decoder: never initialise it from a Stable Diffusion folder here.
    config = dataclasses.replace(config, pixel_decoder=dataclasses.replace(config.pixel_decoder, init_from=""))
    config.validate()
    lm_dir = _require_dir(root / LANGUAGE_MODEL)
    _require_dir(root / VISUAL_TOKENIZER)
    pd_dir = _require_dir(root / PIXEL_DECODING) if config.pixel_decoder.enabled else None
    check_llm_config(lm_dir, config)
    text_tokenizer = load_text_tokenizer(lm_dir)  # before the big model: a missing tokenizer fails fast
    report = LoadReport()

    with torch.device("meta"):
        model = LavitForCausalLM(LavitHFConfig.from_lavit_config(config))

    # Weights are streamed: each file is checked, then its tensors go straight to `device` in their final dtype
    # (float32 for the selector, `model.lavit.precision`) before the next file is read. No full copy of the model
    # in float32 (or the files' dtype) is ever made on the CPU.
    # 1) Visual tokenizer (EVA encoder, selector, merger, quantizer, vit_proj, decoder).
    tokenizer_cfg = config.tokenizer
    model.visual_tokenizer = load_official_visual_tokenizer(root, tokenizer_cfg, dtype=dtype, device=device)
    report.files += [
        str(resolve_file(root / VISUAL_TOKENIZER / n))
        for n in ("eva_vitg_psz14.bin", "tokenizer_encoder.bin", "tokenizer_decoder.bin")
    ]

    # 2) Understanding merger: the tokenizer's weights first, then visual_weight.bin overrides all of them.
    expected = _expected(model.understanding_encoder)
    visual_path = resolve_file(lm_dir / VISUAL_WEIGHT_FILE)
    visual_state = read_state_dict(visual_path)
    report.ignored_keys += check_state_dict(
        visual_path, visual_state, expected, tolerated_suffixes=TOLERATED_SUFFIXES, what="LaVIT's understanding merger"
    )
    tok_state = model.visual_tokenizer.state_dict()
    understanding = {k: tok_state[k].clone() for k in expected if k not in visual_state}
    understanding.update(convert_state(visual_state, device, dtype, float32_prefixes(model.understanding_encoder)))
    del visual_state
    model.understanding_encoder.load_state_dict(understanding, strict=True, assign=True)
    report.files.append(str(visual_path))

    # 3) LLM shards: every shard's keys and shapes are checked first (headers / memory maps, nothing kept), then
    # the shards are read one at a time.
    llm = model.language_model
    files = sharded_weight_files(lm_dir)
    expected = _expected(llm)
    if llm.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    ignored = check_state_dict(
        lm_dir / "(LLM weights)", sharded_weight_shapes(lm_dir), expected, tolerated_suffixes=TOLERATED_SUFFIXES,
        what="LaVIT's LLM",
    )  # fmt: skip
    report.ignored_keys += ignored
    llm_prefixes = float32_prefixes(llm)
    for file in files:
        shard = read_state_dict(file)
        for k in ignored:
            shard.pop(k, None)
        llm.load_state_dict(convert_state(shard, device, dtype, llm_prefixes), strict=False, assign=True)
        del shard
    if llm.config.tie_word_embeddings:
        llm.tie_weights()
    report.files += [str(f) for f in files]

    # 4) Pixel decoder.
    if pd_dir is not None:
        report.files += _load_pixel_decoder(model.pixel_decoder, pd_dir, config, device, dtype)
    if model.regression_head is not None:  # not in the release (Table 3a ablation): fresh init
        model.regression_head.to_empty(device=device)
        torch.nn.init.normal_(model.regression_head.weight, std=config.llm.initializer_range)
        torch.nn.init.zeros_(model.regression_head.bias)

    # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them on the target device, in float32.
    rebuild_rotary(llm, device)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointLayoutError(f"{root}: tensors never loaded: {leftovers[:8]} ({len(leftovers)} total)")
    place(model, device, dtype)  # a no-op for what was streamed; casts the regression head if there is one
    model.set_stage2_trainable()
    return LoadedLavit(model=model.eval(), text_tokenizer=text_tokenizer, report=report)


def _diffusers_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no diffusion_pytorch_model.(safetensors|bin) in {folder}")


def _load_pixel_decoder(decoder, folder: Path, config: LavitConfig, device, dtype: torch.dtype) -> list[str]:
    from model.lavit.pixel_decoder import scheduler_config
    from model.lavit.precision import convert_state

    files = []
    for name in ("unet", "vae"):
        sub = _require_dir(folder / name)
        path = _diffusers_weights(sub)
        state = read_state_dict(path)
        module = getattr(decoder, name)
        check_state_dict(path, state, _expected(module), tolerated_suffixes=TOLERATED_SUFFIXES, what=f"the {name}")
        module.load_state_dict(convert_state(state, device, dtype), strict=True, assign=True)
        del state
        files.append(str(path))
    sched = _require_dir(folder / "scheduler") / "scheduler_config.json"
    if not sched.is_file():
        raise FileNotFoundError(f"scheduler config not found: {sched}")
    found = json.loads(sched.read_text())
    ours = scheduler_config(config.pixel_decoder)
    diffs = {
        k: (found.get(k), ours[k])
        for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        if found.get(k) != ours[k]
    }
    if diffs:
        raise InputError(f"{sched} disagrees with pixel_decoder config (checkpoint, config): {diffs}")
    uncond_path = folder / UNCOND_FILE
    if not uncond_path.is_file():
        raise FileNotFoundError(f"unconditional embeddings not found: {uncond_path}")
    uncond = torch.load(uncond_path, map_location="cpu", weights_only=True)
    if not isinstance(uncond, torch.Tensor) or uncond.shape != decoder.uncond_embeddings.shape:
        got = tuple(uncond.shape) if isinstance(uncond, torch.Tensor) else type(uncond).__name__
        raise CheckpointLayoutError(
            f"{uncond_path}: expected a tensor {tuple(decoder.uncond_embeddings.shape)}, got {got}"
        )
    decoder.uncond_embeddings = torch.nn.Parameter(uncond.to(device=device, dtype=dtype), requires_grad=False)
    files.append(str(uncond_path))
    return files


# ------------------------------------------------------------------------------------------------------------
# Writing (tests, conversion of our trained models into the released layout)


def _torch_save(path: Path, obj: Any) -> None:
    from harness.io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_official_layout(model, text_tokenizer, directory: str | Path, max_shard_params: int = 50_000_000) -> Path:
    """Write `model` in the released layout under `directory` (which must not exist yet).

    Everything is written into a sibling temporary folder that is renamed at the end, so `directory` is either
    complete or absent. LLM weights go into `pytorch_model-0000i-of-0000n.bin` shards of at most
    `max_shard_params` parameters plus `pytorch_model.bin.index.json`, as released. The model's `LavitConfig` goes
    into `lavit_config.yaml` (our addition, which the release lacks).
    """
    from harness.config import save_config
    from model.lavit.pixel_decoder import scheduler_config

    target = Path(directory)
    if target.exists():
        raise FileExistsError(f"{target} exists; write_official_layout writes a fresh directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        lm_dir = tmp / LANGUAGE_MODEL
        lm_dir.mkdir()
        model.language_model.config.to_json_file(str(lm_dir / "config.json"))
        state = {k: v.detach().cpu().contiguous() for k, v in model.language_model.state_dict().items()}
        if model.language_model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        shards: list[dict[str, torch.Tensor]] = [{}]
        count = 0
        for k, v in state.items():
            if count and count + v.numel() > max_shard_params:
                shards.append({})
                count = 0
            shards[-1][k] = v
            count += v.numel()
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
            _torch_save(lm_dir / name, shard)
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (lm_dir / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
        text_tokenizer.save_pretrained(str(lm_dir))
        _torch_save(
            lm_dir / VISUAL_WEIGHT_FILE,
            {k: v.detach().cpu().contiguous() for k, v in model.understanding_encoder.state_dict().items()},
        )

        write_official_tokenizer_layout(model.visual_tokenizer, tmp)

        if model.pixel_decoder is not None:
            from diffusers import DDIMScheduler

            pd_dir = tmp / PIXEL_DECODING
            model.pixel_decoder.unet.save_pretrained(str(pd_dir / "unet"), safe_serialization=False)
            model.pixel_decoder.vae.save_pretrained(str(pd_dir / "vae"), safe_serialization=False)
            DDIMScheduler.from_config(scheduler_config(model.pixel_decoder.cfg)).save_pretrained(
                str(pd_dir / "scheduler")
            )
            _torch_save(pd_dir / UNCOND_FILE, model.pixel_decoder.uncond_embeddings.detach().cpu().clone())
        save_config(model.lavit_config, tmp, name=CONFIG_FILE)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
