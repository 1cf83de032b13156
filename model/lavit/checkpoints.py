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
                stage leaves out of its checkpoints (`UnifiedTask.checkpoint_exclude`), is rebuilt from the run's
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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from model.families import LoadedModel
from model.lavit.configuration import LavitConfig
from model.weights import CheckpointLayoutError, check_state_dict, weight_shapes

RUN_CONFIG = "config.yaml"  # written by train.stages.run_stage
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
RUN_PREFIX = "lavit."  # UnifiedTrainModule holds the model as `.lavit`
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
            pass  # an unreadable summary: the config decides (run_stage_config names the problem)
    return "run"


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """("released", DIR), ("run", CHECKPOINT_DIR) or ("llm run", CHECKPOINT_DIR): the layout of `path` and, for runs,
    the checkpoint to load."""
    from model.lavit.official import LANGUAGE_MODEL, VISUAL_TOKENIZER
    from train.checkpoint import MANIFEST, latest_verified, verify_checkpoint

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
    an `llm_pretrain` run -> its text-only LLM (`lm()` only: the text tasks).

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
            model_config, decoder_step = attach_pixel_decoder(model, model_config, run_stage_config(where.parent.parent), decoder_checkpoint, device, torch_dtype)
            model_id += f"+pixel_decoder:{decoder_checkpoint.parent.parent.resolve()}@step={decoder_step}"
    adapter = LavitEvalAdapter(
        model, text_tokenizer, model_id, seed=seed, understanding_selection=understanding_selection
    )

    def lm(**lm_options: Any):
        """lm-eval LM over the LLM part (text only); options go to `eval.lm_adapter.CausalLMAdapter`."""
        from eval.lm_adapter import CausalLMAdapter

        lm_options.setdefault("device", str(model.llm_device))
        return CausalLMAdapter(model.language_model, text_tokenizer, **lm_options)

    return LoadedModel(model_id=model_id, adapter=adapter, lm=lm, config=model_config, source=layout)


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


def run_stage_config(run: Path):
    """The `unified` stage config of run directory `run` (its config.yaml), checked to be one."""
    from harness.config import ConfigError, load_config
    from model.lavit.stages.config import UnifiedStageConfig

    summary = run / "run.json"
    if summary.is_file():
        stage = json.loads(summary.read_text()).get("stage")
        if stage not in (None, "unified"):
            raise CheckpointLayoutError(f"{run} is a run of stage {stage!r}; evaluation needs a `unified` run")
    try:
        return load_config(UnifiedStageConfig, run / RUN_CONFIG)
    except ConfigError as err:
        raise CheckpointLayoutError(f"{run / RUN_CONFIG} is not a `unified` stage config: {err}") from None


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
    from model.families import get_family
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.precision import convert_state, float32_prefixes, place, rebuild_rotary, tensor_dtype
    from model.lavit.stages.common import load_tokenizer_checkpoint
    from model.lavit.tokenizer import build_tokenizer
    from train.checkpoint import MANIFEST, read_checkpoint_weights
    from train.stages.common import RANDOM_INIT, latest_checkpoint_dir

    run = checkpoint.parent.parent
    stage_cfg = run_stage_config(run)
    # The stage trains no pixel decoder and leaves it out of its checkpoints: the evaluated model has none.
    config = dataclasses.replace(
        stage_cfg.model, pixel_decoder=dataclasses.replace(stage_cfg.model.pixel_decoder, enabled=False, init_from="")
    )
    if stage_cfg.tokenizer_checkpoint in ("", RANDOM_INIT):
        said = "empty" if not stage_cfg.tokenizer_checkpoint else f"{RANDOM_INIT!r}"
        raise CheckpointLayoutError(
            f"{run / RUN_CONFIG}: tokenizer_checkpoint is {said}: the run's frozen visual tokenizer was a random "
            "initialisation that no checkpoint holds, so its image paths cannot be rebuilt"
        )
    text_tokenizer = run_text_tokenizer(stage_cfg.text_tokenizer, run / RUN_CONFIG)  # cheap checks first
    exclude = get_family("lavit").stage("unified").task_class()(stage_cfg, run).checkpoint_exclude()

    with torch.device("meta"):
        model = LavitForCausalLM(LavitHFConfig.from_lavit_config(config))
    # 1) The frozen visual tokenizer, as the stage builds it (real tensors: it is loaded by copying).
    tokenizer = build_tokenizer(config.tokenizer)
    load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(stage_cfg.tokenizer_checkpoint))
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


def _pixel_decoder_checkpoint(path: str | Path) -> Path:
    """A stage-1b run directory or one of its checkpoints -> the checkpoint to load (verified)."""
    from train.checkpoint import MANIFEST, latest_verified, verify_checkpoint

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


def attach_pixel_decoder(model, model_config: LavitConfig, unified_cfg, checkpoint: Path, device: str, dtype: torch.dtype):
    """Build the pixel decoder of stage-1b checkpoint `checkpoint` into `model` (a loaded `unified` run whose stage
    config is `unified_cfg`) and load its weights strictly. Both runs must start from the same stage-1a tokenizer
    (the decoder is conditioned on that tokenizer's reconstructions). Returns (the model config with the pixel
    decoder, the decoder checkpoint's step)."""
    from harness.config import ConfigError, load_config
    from model.lavit.pixel_decoder import PixelDecoder
    from model.lavit.stages.config import PixelDecoderStageConfig
    from train.checkpoint import MANIFEST, read_checkpoint_weights
    from train.stages.common import latest_checkpoint_dir

    run = checkpoint.parent.parent
    try:
        decoder_cfg = load_config(PixelDecoderStageConfig, run / RUN_CONFIG)
    except ConfigError as err:
        raise CheckpointLayoutError(f"{run / RUN_CONFIG} is not a `pixel_decoder` stage config: {err}") from None
    mine = Path(latest_checkpoint_dir(unified_cfg.tokenizer_checkpoint)).resolve()
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
    state, file = read_checkpoint_weights(checkpoint)
    state = {k[len(PIXEL_DECODER_PREFIX):]: v for k, v in state.items() if k.startswith(PIXEL_DECODER_PREFIX)}
    expected = {k: v.shape for k, v in decoder.state_dict().items() if not k.startswith("vae.")}
    check_state_dict(file, {k: v for k, v in state.items() if not k.startswith("vae.")}, expected, what="the pixel decoder of the run's config")
    decoder.load_state_dict(state, strict=False)
    model.pixel_decoder = decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    step = json.loads((checkpoint / MANIFEST).read_text())["step"]
    return dataclasses.replace(model_config, pixel_decoder=pd_cfg), step


# ---------------------------------------------------------------------------------------------
# Run directories of `python -m train llm_pretrain`: the text-only LLM stage 2 starts from


class TextOnlyAdapter:
    """The eval adapter of a text-only LLM: a model id and no request method, so every image task is refused
    (`eval.interface.UnsupportedTaskError`); the text tasks go through `LoadedModel.lm()`."""

    def __init__(self, model_id: str):
        self.model_id = model_id


def _load_llm_run(checkpoint: Path, device: str, dtype: torch.dtype) -> LoadedModel:
    from harness.config import ConfigError, load_config
    from model.lavit.stages.config import LlmPretrainStageConfig
    from model.lavit.stages.llm_pretrain import text_llama_config
    from model.lavit.stages.unified import read_llm_weights
    from transformers import LlamaForCausalLM

    run = checkpoint.parent.parent
    try:
        stage_cfg = load_config(LlmPretrainStageConfig, run / RUN_CONFIG)
    except ConfigError as err:
        raise CheckpointLayoutError(f"{run / RUN_CONFIG} is not an `llm_pretrain` stage config: {err}") from None
    text_tokenizer = run_text_tokenizer(stage_cfg.text_tokenizer, run / RUN_CONFIG)
    state, file = read_llm_weights(str(checkpoint))  # keys language_model.* with the prefix stripped
    llama_config = text_llama_config(stage_cfg.model)
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

    def lm(**lm_options: Any):
        """lm-eval LM over the LLM (text only); options go to `eval.lm_adapter.CausalLMAdapter`."""
        from eval.lm_adapter import CausalLMAdapter

        lm_options.setdefault("device", device)
        return CausalLMAdapter(model, text_tokenizer, **lm_options)

    return LoadedModel(model_id=model_id, adapter=TextOnlyAdapter(model_id), lm=lm, config=stage_cfg.model, source="llm run")
