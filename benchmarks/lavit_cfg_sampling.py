"""Visual-token sampling with classifier-free guidance: one batch + KV cache vs naive recomputation.

    .venv/bin/python benchmarks/lavit_cfg_sampling.py [--tokens 256] [--prompts 4] [--threads 1] [--out FILE]
    .venv/bin/python benchmarks/lavit_cfg_sampling.py --set llm.hidden_size=256 --set tokenizer.llm_hidden_size=256 \
        --set llm.num_layers=8 --set llm.num_heads=8 --set llm.num_kv_heads=8 --set llm.intermediate_size=688

Both paths run in this one process on the same model, prompts and seed (`model.lavit.generation.sample_image_tokens`
with use_cache=True / False): conditional and unconditional ([IMG]-only) rows form one batch; the cached path feeds
one new token per row per step through a `DynamicCache`, the naive path recomputes the whole sequence for every
token. [/IMG] is held back until `--tokens` visual tokens are out, so both generate exactly that many. Prints
tokens/s of each (median of `--repeats` interleaved runs), the ratio, and whether the sampled tokens are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="lavit-tiny", help="lavit preset (LLM size) to benchmark")
    parser.add_argument("--tokens", type=int, default=256, help="visual tokens generated per prompt")
    parser.add_argument(
        "--prompts",
        type=int,
        default=4,
        help="sequences in the batch (x2 rows with CFG); 4 = App. A's samples per prompt",
    )
    parser.add_argument("--prompt-length", type=int, default=16, help="text tokens per prompt")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set llm.num_layers=8 (repeatable)",
    )
    parser.add_argument("--out", help="also write the result JSON here (atomically)")
    args = parser.parse_args()

    import torch

    import model.lavit.configuration  # noqa: F401  (registers presets)
    from harness.config import get_preset, resolve
    from harness.io import atomic_write_json, provenance
    from model.lavit.generation import ImageSampling, sample_image_tokens
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig

    torch.set_num_threads(args.threads)
    cfg = resolve(get_preset("lavit", args.config), overrides=args.overrides)
    cfg.validate()
    cfg = dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))
    if cfg.llm.max_position_embeddings < args.prompt_length + args.tokens + 2:
        cfg = dataclasses.replace(
            cfg, llm=dataclasses.replace(cfg.llm, max_position_embeddings=args.prompt_length + args.tokens + 2)
        )
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 32000, (args.prompt_length - i,), generator=g) for i in range(args.prompts)]
    sampling = ImageSampling(
        top_k=args.top_k,
        temperature=args.temperature,
        cfg_scale=args.cfg_scale,
        min_new_tokens=args.tokens,
        max_new_tokens=args.tokens,
    )

    # warm-up (allocator, kernels) on a short run of each path
    short = dataclasses.replace(sampling, min_new_tokens=4, max_new_tokens=4)
    for use_cache in (True, False):
        sample_image_tokens(model, prompts, short, generator=torch.Generator().manual_seed(1), use_cache=use_cache)

    results = {}
    tokens = {}
    timings: dict[str, list[float]] = {"cached_batched": [], "naive_recompute": []}
    for _ in range(args.repeats):  # interleaved, so machine-load drift hits both paths alike
        for name, use_cache in (("cached_batched", True), ("naive_recompute", False)):
            start = time.perf_counter()
            out = sample_image_tokens(
                model, prompts, sampling, generator=torch.Generator().manual_seed(1), use_cache=use_cache
            )
            timings[name].append(time.perf_counter() - start)
            tokens[name] = [t.tolist() for t in out]
    for name, seconds in timings.items():
        generated = sum(len(t) for t in tokens[name])
        median = statistics.median(seconds)
        results[name] = {
            "seconds_median": round(median, 3),
            "seconds_all": [round(t, 3) for t in seconds],
            "tokens": generated,
            "tokens_per_s": round(generated / median, 1),
        }
    ratio = results["cached_batched"]["tokens_per_s"] / results["naive_recompute"]["tokens_per_s"]
    report = {
        "benchmark": "lavit_cfg_sampling",
        "config": args.config,
        "overrides": args.overrides,
        "llm": dataclasses.asdict(cfg.llm),
        "vocab_size": cfg.vocab_size,
        "prompts": args.prompts,
        "rows_per_step": 2 * args.prompts if args.cfg_scale != 1.0 else args.prompts,
        "tokens_per_prompt": args.tokens,
        "threads": args.threads,
        **results,
        "speedup": round(ratio, 2),
        "identical_tokens": tokens["cached_batched"] == tokens["naive_recompute"],
        "provenance": provenance(),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
