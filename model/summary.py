"""Per-component parameter names, shapes and counts of any model preset, without allocating weights.

    python -m model.summary --config lavit-7b            # table of components
    python -m model.summary --config lavit-7b --params   # ... plus every parameter name and shape
    python -m model.summary --config lavit-tiny --json   # everything as JSON
    python -m model.summary --config vila-7b             # any family's preset: the family is the preset's group

The model is built on the `meta` device (shapes only, no memory), so the 8B-parameter presets summarise in seconds
(most of that is importing transformers/diffusers). Overrides work as everywhere: `--set llm.num_layers=2`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Component name -> dotted module path inside LavitForCausalLM. Order = reading order of the pipeline.
LAVIT_COMPONENTS: dict[str, str] = {
    "tokenizer.encoder": "visual_tokenizer.encoder",
    "tokenizer.selector": "visual_tokenizer.token_predictor",
    "tokenizer.merger": "visual_tokenizer.causal_encoder",
    "tokenizer.quantizer": "visual_tokenizer.quantize",
    "tokenizer.encode_task_layer": "visual_tokenizer.encode_task_layer",
    "tokenizer.vit_proj": "visual_tokenizer.vit_proj",
    "tokenizer.decoder": "visual_tokenizer.decoder",
    "understanding.merger": "understanding_encoder.causal_encoder",
    "understanding.vit_proj": "understanding_encoder.vit_proj",
    "llm.embed_tokens": "language_model.model.embed_tokens",
    "llm.layers": "language_model.model.layers",
    "llm.norm": "language_model.model.norm",
    "llm.lm_head": "language_model.lm_head",
    "regression_head": "regression_head",
    "pixel_decoder.unet": "pixel_decoder.unet",
    "pixel_decoder.vae": "pixel_decoder.vae",
    "pixel_decoder.uncond_embeddings": "pixel_decoder.uncond_embeddings",
}
# Totals reported beside the components (sums of the components listed).
LAVIT_GROUPS: dict[str, tuple[str, ...]] = {
    "visual_tokenizer": tuple(k for k in LAVIT_COMPONENTS if k.startswith("tokenizer.")),
    "understanding_encoder": ("understanding.merger", "understanding.vit_proj"),
    "llm": ("llm.embed_tokens", "llm.layers", "llm.norm", "llm.lm_head"),
    "pixel_decoder": ("pixel_decoder.unet", "pixel_decoder.vae", "pixel_decoder.uncond_embeddings"),
}


# VILA (model/vila): vision tower -> projector -> LLaMA (+ the visual-expert copy of Table 8 when enabled).
VILA_COMPONENTS: dict[str, str] = {
    "vision_tower": "vision_tower",
    "mm_projector": "mm_projector",
    "llm.embed_tokens": "language_model.model.embed_tokens",
    "llm.layers": "language_model.model.layers",
    "llm.norm": "language_model.model.norm",
    "llm.lm_head": "language_model.lm_head",
    "visual_expert": "visual_expert",
}
VILA_GROUPS: dict[str, tuple[str, ...]] = {"llm": ("llm.embed_tokens", "llm.layers", "llm.norm", "llm.lm_head")}


def build_vila_meta_model(config: Any):
    """VilaForCausalLM on the meta device."""
    import torch

    from model.vila.modeling_vila import VilaForCausalLM

    config.validate()
    with torch.device("meta"):
        return VilaForCausalLM(config)


def build_meta_model(config: Any):
    """LavitForCausalLM on the meta device: every parameter has its shape, none has storage."""
    import torch

    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig

    with torch.device("meta"):
        return LavitForCausalLM(LavitHFConfig.from_lavit_config(config))


def _resolve(model: Any, dotted: str) -> Any:
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def summarize(
    model: Any, components: dict[str, str] = LAVIT_COMPONENTS, groups: dict[str, tuple[str, ...]] = LAVIT_GROUPS
) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {"components": {}, "groups": {}}
    seen: set[int] = set()
    for name, path in components.items():
        obj = _resolve(model, path)
        if obj is None:  # e.g. no selector in the fixed-length ablation, no regression head by default
            continue
        if isinstance(obj, torch.nn.Parameter):
            params = {"": obj}
        else:
            params = dict(obj.named_parameters())
        entry = {
            "module": path,
            "count": sum(p.numel() for p in params.values()),
            "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            "parameters": {(f"{path}.{k}" if k else path): list(p.shape) for k, p in params.items()},
        }
        seen.update(id(p) for p in params.values())
        result["components"][name] = entry
    for group, names in groups.items():
        result["groups"][group] = sum(result["components"][n]["count"] for n in names if n in result["components"])
    total = sum(p.numel() for p in model.parameters())
    unassigned = {n: list(p.shape) for n, p in model.named_parameters() if id(p) not in seen}
    result["total"] = total
    result["unassigned"] = unassigned  # parameters in no listed component (should be empty)
    return result


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(n)


def format_table(summary: dict[str, Any], show_params: bool = False) -> str:
    lines = [f"{'component':34s} {'params':>16s} {'':>10s} {'trainable':>16s}"]
    for name, entry in summary["components"].items():
        lines.append(f"{name:34s} {entry['count']:16,d} {_human(entry['count']):>10s} {entry['trainable']:16,d}")
        if show_params:
            for pname, shape in entry["parameters"].items():
                lines.append(f"    {pname} {tuple(shape)}")
    lines.append("")
    for group, count in summary["groups"].items():
        lines.append(f"{'= ' + group:34s} {count:16,d} {_human(count):>10s}")
    lines.append(f"{'= total':34s} {summary['total']:16,d} {_human(summary['total']):>10s}")
    if summary["unassigned"]:
        lines.append(f"unassigned parameters: {list(summary['unassigned'])[:10]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import model.lavit.configuration  # noqa: F401  (registers the "lavit" presets)
    import model.vila.configuration  # noqa: F401  (registers the "vila" presets)
    from harness.config import add_config_arguments, config_from_args, preset_names

    parser = argparse.ArgumentParser(prog="python -m model.summary", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, "lavit")
    for action in parser._actions:  # list every family's presets, not only LaVIT's
        if action.dest == "config":
            action.help = f"named preset ({', '.join(preset_names('lavit') + preset_names('vila'))})"
    parser.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    parser.add_argument("--params", action="store_true", help="list every parameter name and shape")
    args = parser.parse_args(argv)
    if args.config in preset_names("vila"):
        summary = summarize(build_vila_meta_model(config_from_args(args, "vila")), VILA_COMPONENTS, VILA_GROUPS)
    else:
        summary = summarize(build_meta_model(config_from_args(args, "lavit")))
    summary = {"config": args.config, "overrides": args.overrides, **summary}
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"preset {args.config}" + (f" with {args.overrides}" if args.overrides else ""))
        print(format_table(summary, show_params=args.params))
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
