"""VILA checkpoints -> an evaluable model (the vila family's loader, `python -m eval`).

Four layouts, told apart by their files (`detect_layout`):

    single       a released LLaVA-style directory (VILA 1.0): DIR/config.json with model_type `llava_llama`, one set
                 of weight shards (``*.safetensors`` or ``pytorch_model*.bin``, with or without an index) holding the
                 LLM (`model.*`, `lm_head.*`), the vision tower (`model.vision_tower.vision_tower.vision_model.*`) and
                 the projector (`model.mm_projector.*`), plus the tokenizer.
    components   a released per-component directory (VILA 1.5): DIR/llm/ (LlamaConfig + shards + tokenizer),
                 DIR/vision_tower/ (CLIPVisionConfig + `vision_model.*`), DIR/mm_projector/ (config with
                 `mm_projector_type` + `layers.*`); DIR/config.json (optional) gives mm_vision_select_layer/feature.
    vila         our own `VilaForCausalLM.save_pretrained` directory (config.json model_type `vila`), tokenizer given
                 with `tokenizer=` or in DIR/tokenizer/ or DIR.
    run          a `vila_*` stage run (DIR/config.yaml + DIR/checkpoints/step_*/; its newest checkpoint that verifies,
                 or one step directory itself, which must verify): the model is built from the run config's `model`
                 section and its checkpoint (whole model, `VilaForCausalLM.state_dict()` names) loaded strictly;
                 the tokenizer is the run's `text_tokenizer`, else `<data.miniworld>/tokenizer`.

The released vision-tower architecture: the config's `vision_tower_cfg` (a CLIPVisionConfig dict), else
`mm_vision_tower` as a local CLIP folder, else its name (`...clip-vit-large-patch14[-336]`: ViT-L/14 at 336 or
224 px). Every load checks the config before it builds the model (on the meta device), checks every weight file's
keys and shapes against the model before reading it (`model.weights.check_state_dict`: missing and unexpected keys
named as the file names them), then reads tensors (safetensors, or torch.load(weights_only=True)).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from harness.config import ConfigError, from_dict
from model.families import LoadedModel, TextLM
from model.vila.configuration import CLIP_MEAN, CLIP_STD, LlmConfig, ProjectorConfig, VilaConfig, VisionConfig
from model.weights import CheckpointLayoutError, check_state_dict, read_sharded_state_dict, sharded_weight_shapes

LAYOUT_HELP = (
    "a released VILA directory (config.json with model_type llava_llama + weight shards + tokenizer; or llm/, "
    "vision_tower/, mm_projector/), a VilaForCausalLM.save_pretrained directory (model_type vila), or a vila_* stage "
    "run (config.yaml + checkpoints/step_*/)"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
COMPONENTS = ("llm", "vision_tower", "mm_projector")
# Released projector names -> ours.
PROJECTOR_NAMES = {"linear": "linear", "mlp2x_gelu": "mlp2x_gelu", "mlp_downsample": "downsample_2x2",
                   "downsample_2x2": "downsample_2x2", "transformer": "transformer"}  # fmt: skip
# Our key prefix <-> the file's, per layout / component folder (first match wins when reading a file key).
SINGLE_PREFIXES = (
    ("mm_projector.layers.", "model.mm_projector."),
    ("vision_tower.clip.", "model.vision_tower.vision_tower.vision_model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
COMPONENT_PREFIXES = {
    "llm": (("language_model.", ""),),
    "vision_tower": (("vision_tower.clip.", "vision_model."),),
    "mm_projector": (("mm_projector.layers.", "layers."),),
}
# Buffers older transformers saved that the pinned one recomputes (tolerated, dropped).
TOLERATED = ("rotary_emb.inv_freq", "embeddings.position_ids")


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointLayoutError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointLayoutError(f"{path}: expected a JSON object")
    return data


# ------------------------------------------------------------------------------------------------------------
# Layout detection


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """(layout, where): "single" / "components" / "vila" with the directory, or "run" with the checkpoint dir."""
    from model.weights import MANIFEST, latest_verified, verify_checkpoint

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"VILA checkpoint {p} does not exist; expected {LAYOUT_HELP}")
    if not p.is_dir():
        raise CheckpointLayoutError(f"{p} is a file; expected a directory: {LAYOUT_HELP}")
    present = [c for c in COMPONENTS if (p / c).is_dir()]
    if present:
        if len(present) != len(COMPONENTS):
            missing = [c for c in COMPONENTS if c not in present]
            raise CheckpointLayoutError(f"{p}: per-component VILA directory without {missing} (has {present})")
        return "components", p
    if (p / "config.json").is_file():
        model_type = _read_json(p / "config.json").get("model_type")
        if model_type == "llava_llama":
            return "single", p
        if model_type == "vila":
            return "vila", p
        raise CheckpointLayoutError(
            f"{p / 'config.json'}: model_type={model_type!r}; a VILA directory has 'llava_llama' (released) or 'vila'"
        )
    if (p / RUN_CONFIG).is_file() and (p / CHECKPOINTS).is_dir():
        latest, problems = latest_verified(p / CHECKPOINTS)
        if latest is None:
            found = f": {'; '.join(problems)}" if problems else "; has the run saved one yet?"
            raise CheckpointLayoutError(f"run directory {p} has no complete checkpoint that verifies{found}")
        if problems:
            print(f"[checkpoint] {p}: skipping damaged newer checkpoints ({'; '.join(problems)}); using {latest.name}", flush=True)
        return "run", latest
    if (p / MANIFEST).is_file() and p.parent.name == CHECKPOINTS:
        problem = verify_checkpoint(p)
        if problem:
            raise CheckpointLayoutError(f"checkpoint {p} does not verify against its {MANIFEST}: {problem}")
        if not (p.parent.parent / RUN_CONFIG).is_file():
            raise CheckpointLayoutError(f"checkpoint {p}: its run directory has no {RUN_CONFIG}")
        return "run", p
    raise CheckpointLayoutError(f"{p} is not a VILA checkpoint: expected {LAYOUT_HELP}")


# ------------------------------------------------------------------------------------------------------------
# Configs of the released layouts


def llm_config_from_hf(cfg: dict[str, Any], source: Path) -> LlmConfig:
    """A LlamaConfig dict (config.json) -> LlmConfig; a missing architecture key is an error naming it."""
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise CheckpointLayoutError(f"{source}: LLM config lacks {missing}")
    pad = cfg.get("pad_token_id")
    theta, rope_scaling = _rope(cfg, source)
    hidden_act = cfg.get("hidden_act", "silu")
    from transformers.activations import ACT2FN

    if hidden_act not in ACT2FN:
        raise CheckpointLayoutError(f"{source}: hidden_act={hidden_act!r} is not an activation transformers knows")
    attention_bias = cfg.get("attention_bias", False)
    if not isinstance(attention_bias, bool):
        raise CheckpointLayoutError(f"{source}: attention_bias={attention_bias!r}; expected true or false")
    return LlmConfig(
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        hidden_act=hidden_act,
        attention_bias=attention_bias,
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=0 if pad is None or pad < 0 else pad,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _rope(cfg: dict[str, Any], source: Path) -> tuple[float, dict[str, Any]]:
    """(rope_theta, rope_scaling) of a LlamaConfig dict: the released configs (transformers 4.31-4.36) write
    `rope_theta` and `rope_scaling` (null or {"type": ..., "factor": ...}); transformers 5 writes both inside
    `rope_parameters`. A scaling transformers cannot build is refused by name, never dropped."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling")
    params = cfg.get("rope_parameters")
    key = "rope_scaling"
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        key = "rope_parameters"
    if scaling is None:
        return float(theta), {}
    if not isinstance(scaling, dict):
        raise CheckpointLayoutError(f"{source}: {key}={scaling!r}; expected null or a mapping")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), {}
    if kind not in ROPE_INIT_FUNCTIONS:
        raise CheckpointLayoutError(f"{source}: {key}={scaling!r}: rope type {kind!r} is not one transformers builds")
    try:
        LlamaConfig(rope_scaling=dict(scaling), rope_theta=float(theta))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointLayoutError(f"{source}: {key}={scaling!r} is not a valid RoPE scaling ({err})") from None
    return float(theta), dict(scaling)


VISION_KINDS = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}


def vision_config_from_hf(cfg: dict[str, Any], select_layer: int, select_feature: str, source: Path) -> VisionConfig:
    """A CLIP / SigLIP vision config dict (a full CLIPConfig / SiglipConfig nests it as `vision_config`)."""
    cfg = cfg.get("vision_config", cfg)
    kind = cfg.get("model_type", "clip_vision_model")
    if kind not in VISION_KINDS:
        raise CheckpointLayoutError(f"{source}: vision tower model_type={kind!r}; supported: {sorted(VISION_KINDS)}")
    tower = VISION_KINDS[kind]
    siglip = tower == "siglip"  # transformers' SiglipVisionConfig defaults where the file is silent
    return VisionConfig(
        tower=tower,
        image_size=cfg.get("image_size", 224),
        patch_size=cfg.get("patch_size", 16 if siglip else 14),
        hidden_size=cfg.get("hidden_size", 768 if siglip else 1024),
        num_layers=cfg.get("num_hidden_layers", 12 if siglip else 24),
        num_heads=cfg.get("num_attention_heads", 12 if siglip else 16),
        intermediate_size=cfg.get("intermediate_size", 3072 if siglip else 4096),
        hidden_act=cfg.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu"),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6 if siglip else 1e-5),
        use_head=bool(cfg.get("vision_use_head", True)),
        select_layer=select_layer,
        select_feature=select_feature,
        image_mean=(0.5, 0.5, 0.5) if siglip else CLIP_MEAN,  # the processors' defaults; preprocessor_config wins
        image_std=(0.5, 0.5, 0.5) if siglip else CLIP_STD,
    )


def _select(cfg: dict[str, Any], source: Path) -> tuple[int, str]:
    layer = cfg.get("mm_vision_select_layer", -2)
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointLayoutError(f"{source}: mm_vision_select_feature={feature!r}; expected 'patch' or 'cls_patch'")
    return layer, feature


def _refuse_unsupported(cfg: dict[str, Any], source: Path) -> None:
    """VILA 1.5 options that change what the tower sees, which we do not implement: refused by name."""
    if cfg.get("s2"):
        raise CheckpointLayoutError(f"{source}: s2={cfg['s2']!r} (multi-scale S2 vision features) is not supported")
    resolution = cfg.get("vision_resolution", -1)
    if resolution not in (-1, None):
        raise CheckpointLayoutError(
            f"{source}: vision_resolution={resolution!r} (interpolated position embeddings) is not supported"
        )


def _image_processing(vision: VisionConfig, top: dict[str, Any], preprocessor: Path | None, source: Path) -> VisionConfig:
    """`image_aspect_ratio` of the model config and the tower's `preprocessor_config.json` (mean, std, sizes).

    The release's `process_images` (llava/mm_utils.py) pads for "pad", stretches for "resize" and otherwise runs
    the tower's processor alone; a config without the key (getattr(..., None)) is the last case."""
    aspect = top.get("image_aspect_ratio")
    if aspect is None:
        aspect = ""
    if aspect not in ("pad", "resize", ""):
        raise CheckpointLayoutError(f"{source}: image_aspect_ratio={aspect!r}; supported: 'pad', 'resize', or none")
    mean, std = vision.image_mean, vision.image_std
    if preprocessor is not None and preprocessor.is_file():
        pre = _read_json(preprocessor)
        mean = tuple(float(x) for x in pre.get("image_mean", mean))
        std = tuple(float(x) for x in pre.get("image_std", std))
        side = vision.image_size
        sizes = {"size": pre.get("size"), "crop_size": pre.get("crop_size")}
        for key, value in sizes.items():
            if value is None:
                continue
            values = [value] if isinstance(value, int) else [v for v in value.values()] if isinstance(value, dict) else [None]
            if any(v != side for v in values):
                raise CheckpointLayoutError(
                    f"{preprocessor}: {key}={value!r} differs from the tower's image_size={side}; not supported"
                )
        if len(mean) != 3 or len(std) != 3:
            raise CheckpointLayoutError(f"{preprocessor}: image_mean / image_std must have 3 values")
    return dataclasses.replace(vision, image_aspect_ratio=aspect, image_mean=mean, image_std=std)


def _projector(name: Any, source: Path, key: str) -> ProjectorConfig:
    if name not in PROJECTOR_NAMES:
        raise CheckpointLayoutError(f"{source}: {key}={name!r}; supported: {sorted(PROJECTOR_NAMES)}")
    return ProjectorConfig(type=PROJECTOR_NAMES[name])


def _tower_folder(cfg: dict[str, Any], directory: Path) -> Path | None:
    """`mm_vision_tower` as a local folder (relative to the checkpoint or absolute), if it is one."""
    name = cfg.get("mm_vision_tower")
    if not isinstance(name, str) or not name:
        return None
    local = (directory / name) if not Path(name).is_absolute() else Path(name)
    return local if (local / "config.json").is_file() else None


def _released_vision(cfg: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The vision config dict of a single-directory release (see the module docstring)."""
    if isinstance(cfg.get("vision_tower_cfg"), dict):
        return cfg["vision_tower_cfg"]
    name = cfg.get("mm_vision_tower")
    if not isinstance(name, str) or not name:
        raise CheckpointLayoutError(f"{directory / 'config.json'}: no mm_vision_tower / vision_tower_cfg")
    local = _tower_folder(cfg, directory)
    if local is not None:
        return _read_json(local / "config.json")
    if "clip-vit-large-patch14" in name:
        return {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                "patch_size": 14, "image_size": 336 if name.rstrip("/").endswith("-336") else 224}  # fmt: skip
    raise CheckpointLayoutError(
        f"{directory / 'config.json'}: mm_vision_tower={name!r} is neither a local CLIP folder nor a known CLIP ViT-L/14"
    )


def released_config(directory: Path, layout: str) -> VilaConfig:
    """The VilaConfig of a released directory, from its config files."""
    if layout == "single":
        cfg = _read_json(directory / "config.json")
        _refuse_unsupported(cfg, directory / "config.json")
        layer, feature = _select(cfg, directory / "config.json")
        vision = vision_config_from_hf(_released_vision(cfg, directory), layer, feature, directory / "config.json")
        tower = _tower_folder(cfg, directory)
        preprocessor = (tower or directory) / "preprocessor_config.json"
        vision = _image_processing(vision, cfg, preprocessor, directory / "config.json")
        projector = _projector(cfg.get("mm_projector_type", "linear"), directory / "config.json", "mm_projector_type")
        llm = llm_config_from_hf(cfg, directory / "config.json")
    else:
        top = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
        _refuse_unsupported(top, directory / "config.json")
        layer, feature = _select(top, directory / "config.json")
        for part in COMPONENTS:
            if not (directory / part / "config.json").is_file():
                raise CheckpointLayoutError(f"{directory / part}: no config.json")
        llm = llm_config_from_hf(_read_json(directory / "llm" / "config.json"), directory / "llm" / "config.json")
        vision_file = directory / "vision_tower" / "config.json"
        vision = vision_config_from_hf(_read_json(vision_file), layer, feature, vision_file)
        vision = _image_processing(vision, top, directory / "vision_tower" / "preprocessor_config.json", directory / "config.json")
        proj_cfg = _read_json(directory / "mm_projector" / "config.json")
        projector = _projector(proj_cfg.get("mm_projector_type"), directory / "mm_projector" / "config.json", "mm_projector_type")
    config = VilaConfig(vision=vision, llm=llm, projector=projector)
    try:
        config.validate()
    except ValueError as err:
        raise CheckpointLayoutError(f"{directory}: inconsistent config: {err}") from None
    return config


# ------------------------------------------------------------------------------------------------------------
# Key mapping and loading


def _to_file(key: str, prefixes: tuple[tuple[str, str], ...]) -> str | None:
    for ours, theirs in prefixes:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return None


def _to_ours(key: str, prefixes: tuple[tuple[str, str], ...]) -> str | None:
    for ours, theirs in prefixes:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


def _meta_model(config: VilaConfig):
    from model.vila.modeling_vila import build_vila

    return build_vila(config, device="meta")


def _load_parts(model, parts: list[tuple], device: str, dtype: torch.dtype) -> None:
    """Each (folder, prefixes, what[, only]): its shards' keys and shapes checked against the model keys the
    prefixes cover (named as the file names them), then read, renamed and assigned to the meta model on `device`.
    `only` (a key prefix of the file) limits a part to those keys: a tower folder that holds a whole CLIP model."""
    own = {k: v.shape for k, v in model.state_dict().items()}
    for folder, prefixes, what, *only in parts:
        expected = {f: shape for k, shape in own.items() if (f := _to_file(k, prefixes)) is not None}
        shapes = sharded_weight_shapes(folder)
        if only:
            shapes = {k: v for k, v in shapes.items() if k.startswith(only[0])}
        check_state_dict(folder, shapes, expected, tolerated_suffixes=TOLERATED, what=what)
    for folder, prefixes, _, *only in parts:
        state = read_sharded_state_dict(folder)
        loaded = {}
        for key in list(state):
            tensor = state.pop(key)
            if only and not key.startswith(only[0]):
                continue
            ours = _to_ours(key, prefixes)
            if ours is None or ours not in own:
                continue  # a tolerated buffer (checked above)
            loaded[ours] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        model.load_state_dict(loaded, strict=False, assign=True)
    _materialize_buffers(model, device)


def _materialize_buffers(model, device: str) -> None:
    """Recompute the non-persistent buffers (rotary inv_freq, CLIP position ids) a meta-built model lacks; then no
    tensor may be left on the meta device."""
    for name, module in list(model.named_modules()):
        if "inv_freq" in module._buffers and hasattr(module, "config") and module.inv_freq.is_meta:
            with torch.device(device):
                fresh = type(module)(module.config)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fresh)
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            module.position_ids = torch.arange(ids.shape[-1], device=device).expand(ids.shape)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointLayoutError(f"tensors never loaded: {left[:8]} ({len(left)} total)")


def _load_tokenizer(folder: Path, vocab_size: int):
    from model.text_tokenizer import load_text_tokenizer

    # VILA's builder loads the LLM's SentencePiece tokenizer with legacy=False whatever the folder's config says
    # (llava/model/builder.py and llava/model/language_model/builder.py: from_pretrained(..., legacy=False)).
    tokenizer = load_text_tokenizer(folder, legacy=False)
    if len(tokenizer) > vocab_size:
        raise CheckpointLayoutError(f"tokenizer {folder} has {len(tokenizer)} ids > the LLM's vocab_size={vocab_size}")
    return tokenizer


def load_released(path: str | Path, device: str = "cpu", dtype: str | torch.dtype = "float32"):
    """A released (or save_pretrained) VILA directory -> (VilaForCausalLM in eval mode, tokenizer, VilaConfig)."""
    layout, where = detect_layout(path)
    if layout == "run":
        raise CheckpointLayoutError(f"{path} is a run directory; use load_for_eval")
    return _load_directory(layout, where, device, _torch_dtype(dtype), None)


def _single_parts(where: Path) -> list[tuple]:
    """The weight parts of a single-directory release. A weight file without the tower's keys takes the tower from
    `mm_vision_tower`, as the release does (its vision tower `load_model()` reads CLIPVisionModel.from_pretrained(
    mm_vision_tower)); only a local folder is read here (nothing is downloaded)."""
    tower_prefix = SINGLE_PREFIXES[1][1]
    if any(k.startswith(tower_prefix) for k in sharded_weight_shapes(where)):
        return [(where, SINGLE_PREFIXES, "VILA's single-directory layout")]
    cfg = _read_json(where / "config.json")
    tower = _tower_folder(cfg, where)
    if tower is None:
        raise CheckpointLayoutError(
            f"{where}: the weights hold no vision tower ({tower_prefix}*) and mm_vision_tower="
            f"{cfg.get('mm_vision_tower')!r} is not a local folder with a config.json to take it from"
        )
    own = tuple(pair for pair in SINGLE_PREFIXES if pair[1] != tower_prefix)
    return [
        (where, own, "VILA's single-directory layout (without its vision tower)"),
        (tower, COMPONENT_PREFIXES["vision_tower"], f"the vision tower of mm_vision_tower={tower}", "vision_model."),
    ]


def _load_directory(layout: str, where: Path, device: str, dtype: torch.dtype, tokenizer_dir: str | Path | None):
    if layout == "vila":
        from model.vila.modeling_vila import VilaHFConfig

        try:
            config = VilaHFConfig(**{k: v for k, v in _read_json(where / "config.json").items() if k == "vila"}).vila_config
            config.validate()
        except (ConfigError, ValueError, TypeError) as err:
            raise CheckpointLayoutError(f"{where / 'config.json'}: not a VILA model config ({err})") from None
        default_tok = where / "tokenizer" if (where / "tokenizer").is_dir() else where
        parts = [(where, (("", ""),), "the VILA model of config.json")]
    else:
        config = released_config(where, layout)
        if layout == "single":
            default_tok = where
            parts = _single_parts(where)
        else:
            default_tok = where / "llm"
            parts = [(where / c, COMPONENT_PREFIXES[c], f"VILA's {c}/ component") for c in COMPONENTS]
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else default_tok, config.llm.vocab_size)
    model = _meta_model(config)
    _load_parts(model, parts, device, dtype)
    model.requires_grad_(False)  # evaluation only
    return model.eval(), tokenizer, config


# ------------------------------------------------------------------------------------------------------------
# Runs of the vila_* stages


def run_model_config(run: Path) -> tuple[VilaConfig, dict[str, Any]]:
    """The run's `model` section as a VilaConfig, and the whole run config (plain dict)."""
    import yaml

    file = run / RUN_CONFIG
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointLayoutError(f"{file}: not a readable run config ({err})") from None
    summary = run / "run.json"
    if summary.is_file():
        stage = json.loads(summary.read_text()).get("stage")
        if stage is not None and not str(stage).startswith("vila_"):
            raise CheckpointLayoutError(f"{run} is a run of stage {stage!r}; a VILA model comes from a vila_* stage")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointLayoutError(f"{file}: no `model` section (not a vila_* stage run)")
    try:
        config = from_dict(VilaConfig, data["model"])
        config.validate()
    except (ConfigError, ValueError) as err:
        raise CheckpointLayoutError(f"{file}: `model` is not a VILA config: {err}") from None
    return config, data


def run_tokenizer_dir(data: dict[str, Any], run: Path) -> Path:
    spec = data.get("text_tokenizer") or ""
    if not spec:
        miniworld = (data.get("data") or {}).get("miniworld") or ""
        if not miniworld:
            raise CheckpointLayoutError(f"{run / RUN_CONFIG}: neither text_tokenizer nor data.miniworld names a tokenizer")
        spec = str(Path(miniworld) / "tokenizer")
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"{run / RUN_CONFIG}: text_tokenizer {folder} is not a local tokenizer folder")
    return folder


def _load_run(checkpoint: Path, device: str, dtype: torch.dtype, tokenizer_dir: str | Path | None):
    from model.weights import MANIFEST, read_checkpoint_weights

    run = checkpoint.parent.parent
    config, data = run_model_config(run)
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else run_tokenizer_dir(data, run), config.llm.vocab_size)
    model = _meta_model(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state, file = read_checkpoint_weights(checkpoint)
    check_state_dict(file, state, expected, tolerated_suffixes=TOLERATED, what="the VILA model of the run's config")
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    _materialize_buffers(model, device)
    model.requires_grad_(False)  # evaluation only
    step = json.loads((checkpoint / MANIFEST).read_text())["step"]
    return model.eval(), tokenizer, config, step


# ------------------------------------------------------------------------------------------------------------
# The family loader


def load_for_eval(
    path: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    tokenizer: str | Path | None = None,
    conversation: str | None = None,
) -> LoadedModel:
    """Any layout of the module docstring -> `LoadedModel` (adapter: `VilaEvalAdapter`; llm: the LLM for lm-eval).
    tokenizer: a tokenizer folder overriding the layout's; conversation: the adapter's template (default: the
    config's `conversation`)."""
    from model.vila.eval_adapter import VilaEvalAdapter

    torch_dtype = _torch_dtype(dtype)
    layout, where = detect_layout(path)
    if layout == "run":
        model, text_tokenizer, config, step = _load_run(where, device, torch_dtype, tokenizer)
        model_id = f"vila:{where.parent.parent.resolve()}@step={step}"
        source = "run"
    else:
        model, text_tokenizer, config = _load_directory(layout, where, device, torch_dtype, tokenizer)
        model_id = f"vila:{where.resolve()}"
        source = "released" if layout in ("single", "components") else "run"
    if conversation is not None:
        config = dataclasses.replace(config, conversation=conversation)
    adapter = VilaEvalAdapter(model, text_tokenizer, model_id=model_id, conversation=config.conversation)

    llm = TextLM(model.language_model, text_tokenizer, device=str(model.llm_device))
    return LoadedModel(model_id=model_id, adapter=adapter, llm=llm, config=config, source=source)


# ------------------------------------------------------------------------------------------------------------
# Writing the released layouts (tests, and converting our runs into the released form)


def write_released_layout(model, tokenizer, directory: str | Path, layout: str = "single") -> Path:
    """Write `model` (+ `tokenizer`) in a released layout: "single" (config.json model_type llava_llama, one
    model.safetensors with the released key names, tokenizer files) or "components" (llm/, vision_tower/,
    mm_projector/ each with its config, config.json on top). Ablation parts (visual expert, LoRA) have no released
    form and are refused."""
    from safetensors.torch import save_file

    from harness.io import atomic_write_text
    from model.vila.modeling_vila import llama_config
    from model.vila.vision_tower import clip_vision_config

    cfg: VilaConfig = model.vila_config
    if cfg.ablation.visual_expert or cfg.ablation.lora_rank:
        raise ValueError("the released layouts hold no visual expert or LoRA weights")
    names = {v: k for k, v in PROJECTOR_NAMES.items() if k != "downsample_2x2"}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    llama = llama_config(cfg).to_dict()
    # The released configs (transformers 4.36) carry rope_theta / rope_scaling, not transformers 5's rope_parameters.
    llama.pop("rope_parameters", None)
    llama.update(rope_theta=cfg.llm.rope_theta, rope_scaling=dict(cfg.llm.rope_scaling) or None)
    vision = clip_vision_config(cfg.vision).to_dict()
    vision["model_type"] = "siglip_vision_model" if cfg.vision.tower == "siglip" else "clip_vision_model"
    select = {"mm_vision_select_layer": cfg.vision.select_layer, "mm_vision_select_feature": cfg.vision.select_feature,
              "image_aspect_ratio": cfg.vision.image_aspect_ratio or None}  # fmt: skip
    side = cfg.vision.image_size
    preprocessor = {"image_mean": list(cfg.vision.image_mean), "image_std": list(cfg.vision.image_std),
                    "size": {"height": side, "width": side} if cfg.vision.tower == "siglip" else {"shortest_edge": side},
                    **({} if cfg.vision.tower == "siglip" else {"crop_size": {"height": side, "width": side}})}  # fmt: skip
    if layout == "single":
        top = {**llama, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], **select,
               "mm_projector_type": names[cfg.projector.type], "mm_hidden_size": cfg.vision.hidden_size,
               "mm_vision_tower": "openai/clip-vit-large-patch14-336", "vision_tower_cfg": vision,
               "mm_use_im_start_end": False, "mm_use_im_patch_token": False}  # fmt: skip
        atomic_write_text(directory / "config.json", json.dumps(top, indent=1, default=str))
        save_file({_to_file(k, SINGLE_PREFIXES): v for k, v in state.items()}, str(directory / "model.safetensors"))
        atomic_write_text(directory / "preprocessor_config.json", json.dumps(preprocessor, indent=1))
        tokenizer.save_pretrained(str(directory))
    elif layout == "components":
        atomic_write_text(directory / "config.json", json.dumps({"model_type": "llava_llama", **select}, indent=1))
        configs = {"llm": {**llama, "model_type": "llama"}, "vision_tower": vision,
                   "mm_projector": {"model_type": "v2l_projector", "mm_projector_type": names[cfg.projector.type]}}  # fmt: skip
        for part in COMPONENTS:
            (directory / part).mkdir(exist_ok=True)
            atomic_write_text(directory / part / "config.json", json.dumps(configs[part], indent=1, default=str))
            prefixes = COMPONENT_PREFIXES[part]
            part_state = {f: v for k, v in state.items() if (f := _to_file(k, prefixes)) is not None}
            save_file(part_state, str(directory / part / "model.safetensors"))
        atomic_write_text(directory / "vision_tower" / "preprocessor_config.json", json.dumps(preprocessor, indent=1))
        tokenizer.save_pretrained(str(directory / "llm"))
    else:
        raise ValueError(f"layout={layout!r}; expected 'single' or 'components'")
    return directory
