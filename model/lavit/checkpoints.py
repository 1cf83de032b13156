"""LaVIT checkpoints -> an evaluable model (`model/families.py`'s loader of the lavit family, `python -m eval`).

Two layouts, told apart by their files:

    released    DIR/language_model/, DIR/visual_tokenizer/[, DIR/pixel_decoding/]   (`official.load_official_lavit`)
                The config is DIR/lavit_config.yaml when present (written by `official.write_official_layout`, our
                addition); the released 7B has none and is the `lavit-7b` preset. Without pixel_decoding/ the model
                is built without a pixel decoder (understanding and scoring only).
    run         a run directory of `python -m train unified` (DIR/config.yaml + DIR/checkpoints/step_*/manifest.json;
                its newest checkpoint that verifies against its manifest, sizes and SHA-256: a damaged newer one is
                skipped with a message), or one checkpoint directory DIR/checkpoints/step_XXXXXXXX itself (which must
                verify). Either checkpoint layout of `train/checkpoint.py` loads (full, or sharded: the last
                checkpoint of a run carries model.safetensors, an earlier sharded one is merged from its shards).
                The model is built from the run config's `model` section; the frozen visual tokenizer, which the
                stage leaves out of its checkpoints (`RUN_EXCLUDE`), is rebuilt from the run's
                `tokenizer_checkpoint` exactly as the stage builds it; then `model.safetensors` (keys `lavit.*`)
                is loaded strictly: every model key outside the excluded prefixes must be there, with its shape.
                The stage trains no pixel decoder, so a run's model has none, unless `pixel_decoder=` names a
                run of stage 1b (`python -m train pixel_decoder`, directory or checkpoint) trained on the same
                stage-1a tokenizer: its U-Net (and unconditional rows) are attached, strictly loaded, so the model
                can render images (`generate_images`). The text tokenizer is the run's `text_tokenizer` ("byte" or
                a local folder).
    llm run     a run directory of `python -m train llm_pretrain` (the mini world's stand-in for LLaMA-7B; run.json
                says stage "llm_pretrain"), or one of its checkpoint directories: the text-only LLM, for the text
                tasks (lm-eval: mini_knowledge, mmlu), so that forgetting in stage 2 is measured against the LLM
                stage 2 started from. Its adapter answers no image request (an image task is an
                UnsupportedTaskError naming the layout). Scored exactly as a stage-2 run's LLM: the same
                `CausalLMAdapter`, the run's text tokenizer, the context length of its `model.llm`.

Anything else is a CheckpointLayoutError (a missing path a FileNotFoundError) naming the path and both layouts.

A run's config.yaml is read as plain data (`read_run_record`: its `model` section and the keys that say where the
run's frozen parts and text tokenizer came from), so that loading never needs the training stages' configs
(`train/lavit/config.py`, which nest those keys). The weights a part starts from are read here too, for the stages
and the loaders alike: the EVA-CLIP encoder (`load_encoder_weights`), a stage-1a tokenizer
(`load_tokenizer_checkpoint`) and the LLM of an `llm_pretrain` run (`read_llm_weights`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import InputError
from model.families import LoadedModel, TextLM
from model.lavit.configuration import LavitConfig, lavit_7b
from model.weights import (
    MANIFEST,
    RANDOM_INIT,
    CheckpointLayoutError,
    check_state_dict,
    latest_checkpoint_dir,
    latest_verified,
    read_checkpoint_weights,
    read_sharded_state_dict,
    read_state_dict,
    read_weights,
    verify_checkpoint,
    weight_shapes,
)

RUN_CONFIG = "config.yaml"  # written by train.stages.run_stage
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
RUN_PREFIX = "lavit."  # UnifiedTrainModule holds the model as `.lavit`
# What a `unified` run leaves out of its checkpoints (`UnifiedTask.checkpoint_exclude` returns this): the frozen visual
# tokenizer, rebuilt from its `tokenizer_checkpoint`, and the pixel decoder the stage does not train.
RUN_EXCLUDE = (RUN_PREFIX + "visual_tokenizer.", RUN_PREFIX + "pixel_decoder.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _help() -> str:
    from model.lavit.family import FAMILY

    return FAMILY.checkpoint_help


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


LLM_STAGE = "llm_pretrain"  # the stage whose runs load as a text-only LLM ("llm run")


def _run_layout(run: Path) -> str:
    """"llm run" for a run of `llm_pretrain` (its run.json names the stage), else "run" (checked as a `unified` run
    when loaded)."""
    summary = run / "run.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("stage") == LLM_STAGE:
                return "llm run"
        except ValueError:
            pass  # an unreadable summary: the config decides (read_run_record names the problem)
    return "run"


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """("released", DIR), ("run", CHECKPOINT_DIR) or ("llm run", CHECKPOINT_DIR): the layout of `path` and, for runs,
    the checkpoint to load."""
    from model.lavit.official import LANGUAGE_MODEL, VISUAL_TOKENIZER

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"LaVIT checkpoint {p} does not exist; expected {_help()}")
    if p.is_dir() and ((p / LANGUAGE_MODEL).is_dir() or (p / VISUAL_TOKENIZER).is_dir()):
        return "released", p
    if p.is_dir() and (p / RUN_CONFIG).is_file() and (p / CHECKPOINTS).is_dir():
        latest, problems = latest_verified(p / CHECKPOINTS)
        if latest is None:
            found = f": {'; '.join(problems)}" if problems else "; has the run saved one yet?"
            raise CheckpointLayoutError(
                f"run directory {p} has no complete checkpoint that verifies (checkpoints/step_*/ with {MANIFEST}){found}"
            )
        if problems:
            print(f"[checkpoint] {p}: skipping damaged newer checkpoints ({'; '.join(problems)}); using {latest.name}", flush=True)
        return _run_layout(p), latest
    if p.is_dir() and (p / MANIFEST).is_file() and p.parent.name == CHECKPOINTS:
        problem = verify_checkpoint(p)
        if problem:
            raise CheckpointLayoutError(f"checkpoint {p} does not verify against its {MANIFEST}: {problem}")
        if not (p.parent.parent / RUN_CONFIG).is_file():
            raise CheckpointLayoutError(f"checkpoint {p}: its run directory has no {RUN_CONFIG}")
        return _run_layout(p.parent.parent), p
    raise CheckpointLayoutError(f"{p} is not a LaVIT checkpoint: expected {_help()}")


def load_for_eval(
    path: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    config: LavitConfig | None = None,
    seed: int = 0,
    understanding_selection: str = "deterministic",
    pixel_decoder: str | Path | None = None,
) -> LoadedModel:
    """A released LaVIT directory or a `unified` run (directory or checkpoint) -> `LoadedModel` for `python -m eval`;
    an `llm_pretrain` run -> its text-only LLM (`LoadedModel.llm` only: the text tasks).

    config: the model config of a released directory (default: its lavit_config.yaml, else the `lavit-7b` preset);
    runs carry their own. seed / understanding_selection: passed to `LavitEvalAdapter`. pixel_decoder: a stage-1b
    run (directory or checkpoint) to render images with, for a `unified` run (a released directory has its own
    pixel_decoding/); it becomes part of the model id, so evaluations with another decoder are never reused.
    """
    from model.lavit.eval_adapter import LavitEvalAdapter

    torch_dtype = _torch_dtype(dtype)
    layout, where = detect_layout(path)
    decoder_checkpoint = _pixel_decoder_checkpoint(pixel_decoder) if pixel_decoder is not None else None
    if layout == "llm run":
        if decoder_checkpoint is not None:
            raise ValueError(f"{path}: an llm_pretrain run has no visual tokenizer to render images with; do not pass pixel_decoder=")
        if config is not None:
            raise ValueError(f"{path}: a run directory carries its own model config; do not pass config=")
        return _load_llm_run(where, device, torch_dtype)
    if layout == "released":
        if decoder_checkpoint is not None:
            raise ValueError(f"{path}: a released directory brings its own pixel_decoding/; do not pass pixel_decoder=")
        model, text_tokenizer, model_config = _load_released(where, config, device, torch_dtype)
        model_id = f"lavit:{where.resolve()}"
    else:
        if config is not None:
            raise ValueError(f"{path}: a run directory carries its own model config; do not pass config=")
        model, text_tokenizer, model_config, step = _load_run(where, device, torch_dtype)
        model_id = f"lavit:{where.parent.parent.resolve()}@step={step}"
        if decoder_checkpoint is not None:
            tokenizer_checkpoint = read_run_record(where.parent.parent, "unified").tokenizer_checkpoint
            model_config, decoder_step = attach_pixel_decoder(model, model_config, tokenizer_checkpoint, decoder_checkpoint, device, torch_dtype)
            model_id += f"+pixel_decoder:{decoder_checkpoint.parent.parent.resolve()}@step={decoder_step}"
    adapter = LavitEvalAdapter(
        model, text_tokenizer, model_id, seed=seed, understanding_selection=understanding_selection
    )
    llm = TextLM(model.language_model, text_tokenizer, device=str(model.llm_device))
    return LoadedModel(model_id=model_id, adapter=adapter, llm=llm, config=model_config, source=layout)


# ------------------------------------------------------------------------------------------------------------
# Released directories


def released_config(directory: Path, config: LavitConfig | None = None) -> LavitConfig:
    """`config`, else DIR/lavit_config.yaml, else the `lavit-7b` preset; without pixel_decoding/, no pixel decoder."""
    from harness.config import ConfigError, get_preset, load_config
    from model.lavit.official import CONFIG_FILE, PIXEL_DECODING

    if config is None:
        file = directory / CONFIG_FILE
        if file.is_file():
            try:
                config = load_config(LavitConfig, file)
            except ConfigError as err:
                raise CheckpointLayoutError(f"{file}: not a LaVIT model config ({err})") from None
        else:
            config = get_preset("lavit", "lavit-7b")
    if not (directory / PIXEL_DECODING).is_dir() and config.pixel_decoder.enabled:
        config = dataclasses.replace(config, pixel_decoder=dataclasses.replace(config.pixel_decoder, enabled=False))
    return config


def _load_released(directory: Path, config: LavitConfig | None, device: str, dtype: torch.dtype):
    from model.lavit.official import load_official_lavit

    config = released_config(directory, config)
    loaded = load_official_lavit(directory, config, dtype=dtype, device=device)
    return loaded.model, loaded.text_tokenizer, config


# ------------------------------------------------------------------------------------------------------------
# Run directories of `python -m train unified`


# The keys of a LaVIT run's config.yaml that loading reads, per stage. The stage configs (`train/lavit/config.py`) nest
# them under these names; every other key says how the run trained and is left to training.
RUN_KEYS = {
    "unified": ("model", "tokenizer_checkpoint", "text_tokenizer"),
    "pixel_decoder": ("model", "tokenizer_checkpoint", "stable_diffusion_path"),
    "llm_pretrain": ("model", "text_tokenizer"),
}


@dataclass(frozen=True)
class RunRecord:
    """What a LaVIT run's config.yaml tells its loader (the keys of `RUN_KEYS`)."""

    model: LavitConfig  # the model section, over the stage configs' default `lavit-7b`
    tokenizer_checkpoint: str = ""  # the stage-1a run the frozen visual tokenizer came from
    text_tokenizer: str = "byte"  # "byte" or a local tokenizer folder
    stable_diffusion_path: str = ""  # the VAE (and U-Net init) of a pixel decoder run; "" = a random VAE


def read_run_record(run: Path, stage: str) -> RunRecord:
    """The loader's keys of run directory `run`, a run of `stage`, checked against their types: a missing key or a
    `model` section that is not a LaVIT config is a CheckpointLayoutError naming the file."""
    import yaml

    from harness.config import ConfigError, merge

    file = run / RUN_CONFIG
    not_a = f"{file} is not {'an' if stage == 'llm_pretrain' else 'a'} `{stage}` stage config"
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointLayoutError(f"{not_a}: unreadable ({err})") from None
    missing = [k for k in RUN_KEYS[stage] if not isinstance(data, dict) or k not in data]
    if missing:
        raise CheckpointLayoutError(f"{not_a}: no {', '.join(missing)}")
    try:
        # The stage configs build `model` as `field(default_factory=lavit_7b)`: the same base here.
        return merge(RunRecord(model=lavit_7b()), {k: data[k] for k in RUN_KEYS[stage]})
    except ConfigError as err:
        raise CheckpointLayoutError(f"{not_a}: {err}") from None


def run_text_tokenizer(spec: str, where: Path):
    """The run config's `text_tokenizer`: "byte" or a local tokenizer folder (nothing is downloaded)."""
    from model.lavit.official import load_text_tokenizer
    from model.lavit.vocabulary import build_byte_text_tokenizer

    if spec == "byte":
        return build_byte_text_tokenizer()
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: text_tokenizer {folder} is not a local tokenizer folder")
    return load_text_tokenizer(folder)


def _load_run(checkpoint: Path, device: str, dtype: torch.dtype):
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.precision import convert_state, float32_prefixes, place, rebuild_rotary, tensor_dtype
    from model.lavit.tokenizer import build_tokenizer

    run = checkpoint.parent.parent
    summary = run / "run.json"
    if summary.is_file():
        stage = json.loads(summary.read_text()).get("stage")
        if stage not in (None, "unified"):
            raise CheckpointLayoutError(f"{run} is a run of stage {stage!r}; evaluation needs a `unified` run")
    record = read_run_record(run, "unified")
    # The stage trains no pixel decoder and leaves it out of its checkpoints: the evaluated model has none.
    config = dataclasses.replace(
        record.model, pixel_decoder=dataclasses.replace(record.model.pixel_decoder, enabled=False, init_from="")
    )
    if record.tokenizer_checkpoint in ("", RANDOM_INIT):
        said = "empty" if not record.tokenizer_checkpoint else f"{RANDOM_INIT!r}"
        raise CheckpointLayoutError(
            f"{run / RUN_CONFIG}: tokenizer_checkpoint is {said}: the run's frozen visual tokenizer was a random "
            "initialisation that no checkpoint holds, so its image paths cannot be rebuilt"
        )
    text_tokenizer = run_text_tokenizer(record.text_tokenizer, run / RUN_CONFIG)  # cheap checks first
    exclude = RUN_EXCLUDE

    with torch.device("meta"):
        model = LavitForCausalLM(LavitHFConfig.from_lavit_config(config))
    # 1) The frozen visual tokenizer, as the stage builds it (real tensors: it is loaded by copying).
    tokenizer = build_tokenizer(config.tokenizer)
    load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(record.tokenizer_checkpoint))
    model.visual_tokenizer = tokenizer
    # 2) Everything else from the run's checkpoint, strictly.
    expected = {
        RUN_PREFIX + k: v.shape
        for k, v in model.state_dict().items()
        if not (RUN_PREFIX + k).startswith(exclude)
    }
    prefixes = float32_prefixes(model)
    file = checkpoint / MODEL_FILE
    if file.is_file():
        # Streamed: the keys and shapes come from the header, then each tensor is read and put on `device` in its
        # final dtype (float32 parts stay float32: `model.lavit.precision`) one at a time: no CPU copy of the model.
        from safetensors import safe_open

        shapes = {k: v for k, v in weight_shapes(file).items() if not k.startswith(exclude)}  # excluded: harmless
        check_state_dict(file, shapes, expected, what="the LaVIT model of the run's config")
        with safe_open(str(file), framework="pt") as f:
            for key in shapes:
                name = key[len(RUN_PREFIX) :]
                tensor = f.get_tensor(key)
                placed = tensor.to(device=device, dtype=tensor_dtype(dtype, name, prefixes, tensor))
                model.load_state_dict({name: placed}, strict=False, assign=True)
    else:  # an earlier checkpoint of a sharded run: its DCP shards merged in memory
        state, file = read_checkpoint_weights(checkpoint)
        for k in [k for k in state if k.startswith(exclude)]:  # not expected, but harmless if a run kept them
            del state[k]
        check_state_dict(file, state, expected, what="the LaVIT model of the run's config")
        state = {k[len(RUN_PREFIX) :]: state.pop(k) for k in list(state)}
        model.load_state_dict(convert_state(state, device, dtype, prefixes), strict=False, assign=True)
        del state
    # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them on the device, in float32.
    rebuild_rotary(model.language_model, device)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointLayoutError(f"{file}: tensors never loaded: {leftovers[:8]} ({len(leftovers)} total)")
    place(model, device, dtype)
    model.set_stage2_trainable()
    step = json.loads((checkpoint / MANIFEST).read_text())["step"]
    return model.eval(), text_tokenizer, config, step


# ------------------------------------------------------------------------------------------------------------
# A stage-1b run attached to a `unified` run (the two stages branch off the same stage-1a tokenizer, §3.3)

PIXEL_DECODER_PREFIX = "pixel_decoder."  # PixelDecoderTrainModule holds the decoder as `.pixel_decoder`
UNET_PROJ_PREFIX = "tokenizer.decoder.unet_proj."  # ... and the tokenizer, whose unet_proj stage 1b trains


def _pixel_decoder_checkpoint(path: str | Path) -> Path:
    """A stage-1b run directory or one of its checkpoints -> the checkpoint to load (verified)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"pixel decoder run {p} does not exist")
    if (p / MANIFEST).is_file() and p.parent.name == CHECKPOINTS:
        problem = verify_checkpoint(p)
        if problem:
            raise CheckpointLayoutError(f"pixel decoder checkpoint {p} does not verify against its {MANIFEST}: {problem}")
        run = p.parent.parent
    elif (p / RUN_CONFIG).is_file() and (p / CHECKPOINTS).is_dir():
        run = p
        found, problems = latest_verified(p / CHECKPOINTS)
        if found is None:
            raise CheckpointLayoutError(f"pixel decoder run {p} has no checkpoint that verifies{': ' + '; '.join(problems) if problems else ''}")
        p = found
    else:
        raise CheckpointLayoutError(f"{p} is not a run of `python -m train pixel_decoder` (config.yaml + checkpoints/step_*/) nor one of its checkpoints")
    summary = run / "run.json"
    stage = json.loads(summary.read_text()).get("stage") if summary.is_file() else None
    if stage not in (None, "pixel_decoder"):
        raise CheckpointLayoutError(f"{run} is a run of stage {stage!r}; pixel_decoder= needs a `pixel_decoder` run")
    return p


def attach_pixel_decoder(model, model_config: LavitConfig, tokenizer_checkpoint: str, checkpoint: Path, device: str, dtype: torch.dtype):
    """Build the pixel decoder of stage-1b checkpoint `checkpoint` into `model` (a loaded `unified` run whose frozen
    tokenizer came from `tokenizer_checkpoint`) and load its weights strictly. Both runs must start from the same
    stage-1a tokenizer (the decoder is conditioned on that tokenizer's reconstructions). Returns (the model config
    with the pixel decoder, the decoder checkpoint's step)."""
    from model.lavit.pixel_decoder import PixelDecoder

    run = checkpoint.parent.parent
    decoder_cfg = read_run_record(run, "pixel_decoder")
    mine = Path(latest_checkpoint_dir(tokenizer_checkpoint)).resolve()
    theirs = Path(latest_checkpoint_dir(decoder_cfg.tokenizer_checkpoint)).resolve() if decoder_cfg.tokenizer_checkpoint else None
    if theirs != mine or decoder_cfg.model.tokenizer != model_config.tokenizer:
        raise CheckpointLayoutError(
            f"pixel decoder run {run} was trained on the tokenizer {theirs} ({run / RUN_CONFIG}), the unified run on "
            f"{mine}: a pixel decoder only renders the codes of its own stage-1a tokenizer"
        )
    pd_cfg = dataclasses.replace(decoder_cfg.model.pixel_decoder, enabled=True, init_from="")
    if pd_cfg.latent_space == "vae" and not decoder_cfg.stable_diffusion_path:
        raise CheckpointLayoutError(
            f"{run / RUN_CONFIG}: the run's VAE was a random initialisation that no checkpoint holds (no "
            "stable_diffusion_path), so its decoder cannot be rebuilt"
        )
    context_dim = model_config.tokenizer.unet_context_dim
    if decoder_cfg.stable_diffusion_path:
        decoder = PixelDecoder.from_stable_diffusion(pd_cfg, decoder_cfg.stable_diffusion_path, context_dim=context_dim)
    else:
        decoder = PixelDecoder(pd_cfg, context_dim=context_dim)
    full_state, file = read_checkpoint_weights(checkpoint)
    state = {k[len(PIXEL_DECODER_PREFIX):]: v for k, v in full_state.items() if k.startswith(PIXEL_DECODER_PREFIX)}
    expected = {k: v.shape for k, v in decoder.state_dict().items() if not k.startswith("vae.")}
    check_state_dict(file, {k: v for k, v in state.items() if not k.startswith("vae.")}, expected, what="the pixel decoder of the run's config")
    decoder.load_state_dict(state, strict=False)
    # Stage 1b trains the tokenizer's unet_proj (x_rec -> the U-Net's context) with the U-Net; a run made before it
    # did holds none and was conditioned on the tokenizer's own, which the model already has.
    projection = {k[len(UNET_PROJ_PREFIX):]: v for k, v in full_state.items() if k.startswith(UNET_PROJ_PREFIX)}
    if projection:
        unet_proj = model.visual_tokenizer.decoder.unet_proj
        check_state_dict(file, projection, {k: v.shape for k, v in unet_proj.state_dict().items()}, what="the tokenizer's unet_proj")
        unet_proj.load_state_dict({k: v.to(device=device, dtype=unet_proj.weight.dtype) for k, v in projection.items()})
    model.pixel_decoder = decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    step = json.loads((checkpoint / MANIFEST).read_text())["step"]
    return dataclasses.replace(model_config, pixel_decoder=pd_cfg), step


# ---------------------------------------------------------------------------------------------
# Run directories of `python -m train llm_pretrain`: the text-only LLM stage 2 starts from


class TextOnlyAdapter:
    """The eval adapter of a text-only LLM: a model id and no request method, so every image task is refused
    (`eval.interface.UnsupportedTaskError`); the text tasks go through `LoadedModel.llm`."""

    def __init__(self, model_id: str):
        self.model_id = model_id


def _load_llm_run(checkpoint: Path, device: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import LlamaForCausalLM

    from model.lavit.modeling_lavit import text_llama_config

    run = checkpoint.parent.parent
    record = read_run_record(run, "llm_pretrain")
    text_tokenizer = run_text_tokenizer(record.text_tokenizer, run / RUN_CONFIG)
    state, file = read_llm_weights(str(checkpoint))  # keys language_model.* with the prefix stripped
    llama_config = text_llama_config(record.model)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(file, state, expected, what="the LLM of the llm_pretrain run's config")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False, assign=True)
    from model.lavit.precision import rebuild_rotary

    rebuild_rotary(model, device)  # non-persistent rotary buffers were created on meta
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointLayoutError(f"{file}: tensors never loaded: {leftovers[:8]} ({len(leftovers)} total)")
    model.eval()
    step = json.loads((checkpoint / "manifest.json").read_text())["step"]
    model_id = f"lavit-llm:{run.resolve()}@step={step}"
    llm = TextLM(model, text_tokenizer, device=device)
    return LoadedModel(model_id=model_id, adapter=TextOnlyAdapter(model_id), llm=llm, config=record.model, source="llm run")


# ---------------------------------------------------------------------------------------------
# The weights a LaVIT part starts from: the EVA-CLIP encoder, a stage-1a tokenizer, the LLM of an `llm_pretrain` run
# (read by the training stages, `train/lavit/`, and by the loaders above).


def read_encoder_weights(path: str) -> tuple[dict, str]:
    """The ViT weights at `path`, keyed as the tokenizer's `encoder` state dict, and the file they came from.

    Accepted: the released EVA-CLIP file (eva_vitg_psz14.bin, bare keys) or any .bin/.safetensors with the same keys
    (optionally all under `encoder.`); an `encoder_pretrain` run directory (its latest checkpoint), one of its
    checkpoint directories or their model.safetensors (the `encoder.*` keys are taken, `text_encoder.*` and
    `logit_scale` left); a stage-1a checkpoint whose encoder was saved (`tokenizer.encoder.*`)."""
    try:
        state, file = read_weights(path)  # a run: its newest checkpoint that verifies; either checkpoint layout
    except FileNotFoundError as err:
        raise FileNotFoundError(f"encoder_path {path}: {err} (expected an encoder_pretrain run or a weights file)") from None
    for prefix in ("tokenizer.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(file)
    return state, str(file)


def load_encoder_weights(tokenizer, path: str) -> None:
    """Pretrained ViT weights into `tokenizer.encoder`, strictly (`read_encoder_weights` lists the layouts)."""
    if not path:
        return
    state, file = read_encoder_weights(path)
    expected = {k: v.shape for k, v in tokenizer.encoder.state_dict().items()}
    check_state_dict(file, state, expected, what="the tokenizer's encoder")
    tokenizer.encoder.load_state_dict(state)


def load_tokenizer_checkpoint(tokenizer, path: str, prefix: str = "tokenizer.") -> None:
    """Stage-1a weights into `tokenizer`: a stage-1a checkpoint directory (keys `tokenizer.*`), its
    model.safetensors, or a released `visual_tokenizer/` folder. The EMA statistics are restarted."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() and ((p / "tokenizer_encoder.bin").exists() or (p / "visual_tokenizer").is_dir()):
        from model.lavit.official_tokenizer import load_official_visual_tokenizer

        loaded = load_official_visual_tokenizer(p, tokenizer.cfg)
        tokenizer.load_state_dict(loaded.state_dict())
        return
    if p.is_dir() and (p / MANIFEST).is_file():  # a checkpoint directory, either layout
        state, file = read_checkpoint_weights(p)
    else:
        file = p / "model.safetensors" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer weights at {path} (expected a stage-1a checkpoint directory, .safetensors, or a released visual_tokenizer/ folder)")
        state = load_file(str(file))
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if getattr(tokenizer, "token_predictor", None) is None:  # fixed-length ablation: the trained selector is unused
        state = {k: v for k, v in state.items() if not k.startswith("token_predictor.")}
    missing, unexpected = tokenizer.load_state_dict(state, strict=False)
    not_encoder = [k for k in missing if not k.startswith("encoder.")]
    if unexpected or not_encoder:
        raise InputError(f"tokenizer weights {file}: missing {not_encoder[:8]}, unexpected {unexpected[:8]} (written with another tokenizer config?)")
    if len(missing) > len(not_encoder):
        # Stage 1a leaves a ViT it loaded from `encoder_path` out of its checkpoints: reload it from there.
        recorded = _recorded_encoder_path(file)
        if recorded:
            load_encoder_weights(tokenizer, recorded)


def _recorded_encoder_path(file: Path) -> str:
    """`encoder_path` of the stage-1a run RUN/checkpoints/step_*/model.safetensors belongs to ("" if none)."""
    import yaml

    config = file.parent.parent.parent / "config.yaml"
    if file.parent.parent.name != "checkpoints" or not config.is_file():
        return ""
    return str((yaml.safe_load(config.read_text()) or {}).get("encoder_path") or "")


def read_llm_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The LLM weights at `path` (LlamaForCausalLM keys) and where they came from: an `llm_pretrain` run directory
    (its latest checkpoint), one of its checkpoint directories or their model.safetensors (keys `language_model.*`,
    prefix stripped), or a transformers LLaMA folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"llm_path {path} does not exist (expected an llm_pretrain run directory, its model.safetensors, or a LLaMA folder)")
    resolved = Path(latest_checkpoint_dir(path))  # a run: its newest checkpoint that verifies
    if resolved.is_dir() and (resolved / MANIFEST).is_file():
        state, file = read_checkpoint_weights(resolved)  # either checkpoint layout
    elif resolved.is_dir():
        return read_sharded_state_dict(p), str(p)  # a transformers LLaMA folder
    else:
        state, file = read_state_dict(resolved), resolved
    prefix = "language_model."
    other = sorted(k for k in state if not k.startswith(prefix))
    if other:
        raise CheckpointLayoutError(f"{file}: not an llm_pretrain checkpoint: {len(other)} keys outside {prefix}* ({', '.join(other[:8])})")
    return {k[len(prefix):]: v for k, v in state.items()}, str(file)
