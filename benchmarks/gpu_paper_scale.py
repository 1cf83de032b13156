"""Paper-scale LaVIT on one GPU: each measured speed as a ratio to what the hardware allows (issue 11).

    .venv/bin/python benchmarks/gpu_paper_scale.py [--peak-tflops 989] [--bandwidth-tbs 4.8] [--out FILE]

NOT RUN BY ITS AUTHOR: it was written on a machine without a GPU. Its measuring functions are exercised on the tiny
preset on the CPU by tests/test_gpu_benchmark.py (that they run, not their numbers); the numbers need a GPU.

Random weights (nothing is downloaded), the `lavit-7b` preset without its pixel decoder, bfloat16 through
`model.lavit.precision.place` (selector and rotary frequencies float32), one CUDA device. About 3-5 minutes on an
H100/H200-class GPU. Prints one line per measurement, `name: value unit (ratio to its limit)`:

1. correctness: the `lavit-tiny` model in float32 on the CPU and on the GPU with the same weights: max |logit
   difference| (limit 1e-4) and whether the tokenizer's codes are identical.
2. tokenizer: `tokenize` on a batch of 64 images: images/s; EVA's TFLOP/s (matmul FLOPs counted from the config) as
   a fraction of the bf16 dense peak (goal >= 0.60); the rest of the pipeline's time relative to EVA's (goal <= 0.25).
3. stage 2: LLM forward + backward on batch 8 with 32 text tokens and the dynamic (--dynamic-tokens) or fixed (256)
   visual tokens: MFU = 6 N T (+ attention) / time / peak (goal >= 0.55), and the fixed / dynamic step-time ratio.
4. sampling: `sample_image_tokens` with CFG (4 prompts = 8 rows, KV cache, top-k 50), with the dynamic cache, the
   static cache, and the static cache with the decoding step captured (`--captures`: "cudagraphs" = torch.compile
   mode reduce-overhead, "compile" = inductor alone): ms per decoding step against the weight-read bound (LLM
   bytes / HBM bandwidth) (goal <= 2x).

Peak FLOP/s and bandwidth default to a table of known GPUs (by name); pass --peak-tflops / --bandwidth-tbs for others.
Without CUDA it prints one line `error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

# Dense bf16 tensor-core peak (TFLOP/s) and HBM bandwidth (TB/s) of the SXM parts, from the vendors' data sheets.
KNOWN_GPUS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.0), "L40S": (362.0, 0.864)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: from its name)")
    parser.add_argument("--bandwidth-tbs", type=float, help="HBM bandwidth in TB/s (default: from its name)")
    parser.add_argument("--tokenizer-batch", type=int, default=64)
    parser.add_argument("--stage2-batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--dynamic-tokens", type=int, default=90, help="visual tokens per image, dynamic tokenizer")
    parser.add_argument("--sampling-tokens", type=int, default=64, help="visual tokens sampled per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="prompts (x2 rows with CFG)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--captures", default="none,cudagraphs",
                        help="static-cache sampling step modes to time: none, compile, cudagraphs (comma-separated)")
    parser.add_argument("--out", help="also write the results as JSON here")
    return parser.parse_args(argv)


def synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(cfg, device, dtype):
    """A randomly initialised LaVIT (no pixel decoder) on `device` in `dtype` (float32 parts kept)."""
    import torch

    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.precision import place

    cfg = dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))
    with torch.device(device):
        model = LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg))
    return place(model, device, dtype).eval()


def eva_flops(tcfg, images: int) -> float:
    """Matmul FLOPs of the EVA encoder (patch embedding, qkv/proj, attention, MLP) for `images` images."""
    n, d, m = tcfg.num_patches + 1, tcfg.encoder_width, tcfg.encoder_mlp
    per_block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    patch = 2 * tcfg.num_patches * 3 * tcfg.patch_size**2 * d
    return images * (tcfg.encoder_depth * per_block + patch)


def measure_tokenizer(model, batch: int, device, repeats: int) -> dict:
    import torch

    tok = model.visual_tokenizer
    size = tok.cfg.image_size
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=torch.float32)
    with torch.no_grad():
        total = timed(lambda: tok.tokenize(pixels), device, repeats)
        eva = timed(lambda: tok.encode_features(pixels), device, repeats)
    return {
        "images_per_s": batch / total,
        "eva_seconds": eva,
        "total_seconds": total,
        "eva_tflops": eva_flops(tok.cfg, batch) / eva / 1e12,
        "rest_over_eva": (total - eva) / eva,
    }


def llm_step_flops(llm_cfg, params: int, batch: int, length: int) -> float:
    """Training FLOPs of one forward + backward: 6 N T for the weights + 12 L T^2 d-ish for causal attention."""
    tokens = batch * length
    attention = 6 * llm_cfg.num_layers * batch * length * length * llm_cfg.hidden_size  # 3 x (2 QK + 2 PV) / 2 causal
    return 6 * params * tokens + attention


def measure_stage2(model, batch: int, text_tokens: int, visual_tokens: int, device, repeats: int) -> dict:
    import torch

    llm = model.language_model
    cfg = model.lavit_config.llm
    length = visual_tokens + 2 + text_tokens
    dtype = llm.lm_head.weight.dtype
    embeds = torch.randn(batch, length, cfg.hidden_size, device=device, dtype=dtype) * 0.02
    labels = torch.randint(0, model.lavit_config.vocab_size, (batch, length), device=device)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    params = sum(p.numel() for p in llm.parameters()) - llm.get_input_embeddings().weight.numel()  # a lookup

    def step():
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        out.loss.backward()
        llm.zero_grad(set_to_none=True)

    llm.train()
    seconds = timed(step, device, repeats)
    llm.eval()
    return {"seconds": seconds, "length": length, "tflops": llm_step_flops(cfg, params, batch, length) / seconds / 1e12}


def measure_sampling(
    model, prompts: int, tokens: int, device, repeats: int, static_cache: bool = False, capture: str = "none",
    compile_backend: str = "inductor",
) -> dict:
    import torch

    from model.lavit.generation import ImageSampling, sample_image_tokens

    sampling = ImageSampling(top_k=50, temperature=1.0, cfg_scale=1.5, min_new_tokens=tokens, max_new_tokens=tokens)
    prompt_ids = [torch.randint(3, 1000, (16,)) for _ in range(prompts)]
    generator = torch.Generator(device=device)

    def run():
        generator.manual_seed(0)
        with torch.no_grad():
            sample_image_tokens(model, prompt_ids, sampling, generator=generator, static_cache=static_cache,
                                capture=capture, compile_backend=compile_backend)  # fmt: skip

    seconds = timed(run, device, repeats)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    return {"ms_per_step": 1e3 * seconds / (tokens + 1), "weight_bytes": weight_bytes}


def correctness(device) -> dict:
    """lavit-tiny in float32, same weights on the CPU and on `device`: logits and codes."""
    import copy

    import torch

    from harness.config import get_preset

    torch.manual_seed(0)
    cpu = build(get_preset("lavit", "lavit-tiny"), "cpu", torch.float32)
    gpu = copy.deepcopy(cpu).to(device)
    size = cpu.visual_tokenizer.cfg.image_size
    pixels = torch.randn(4, 3, size, size)
    embeds = torch.randn(2, 24, cpu.lavit_config.llm.hidden_size)
    with torch.no_grad():
        a = cpu(inputs_embeds=embeds).logits
        b = gpu(inputs_embeds=embeds.to(device)).logits.cpu()
        codes_cpu = cpu.visual_tokenizer.tokenize(pixels).codes
        codes_gpu = gpu.visual_tokenizer.tokenize(pixels.to(device)).codes
    same = all(torch.equal(x, y.cpu()) for x, y in zip(codes_cpu, codes_gpu))
    return {"max_logit_diff": float((a - b).abs().max()), "codes_identical": same}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from harness.errors import InputError

    if not torch.cuda.is_available():
        raise InputError("benchmarks/gpu_paper_scale.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    from model.lavit.generation import CAPTURES

    unknown = [c for c in args.captures.split(",") if c and c not in CAPTURES]
    if unknown:
        raise InputError(f"--captures: unknown mode {unknown[0]!r}; expected some of {', '.join(CAPTURES)}")
    import model.lavit.configuration  # noqa: F401  (registers presets)
    from harness.config import get_preset

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    known = next((v for k, v in KNOWN_GPUS.items() if k in name), None)
    peak = args.peak_tflops or (known[0] if known else None)
    bandwidth = args.bandwidth_tbs or (known[1] if known else None)
    if peak is None or bandwidth is None:
        raise InputError(f"unknown GPU {name!r}: pass --peak-tflops and --bandwidth-tbs")
    print(f"device: {name}; peak {peak:g} TFLOP/s bf16 dense, {bandwidth:g} TB/s", flush=True)
    results: dict = {"device": name, "peak_tflops": peak, "bandwidth_tbs": bandwidth}

    check = correctness(device)
    results["correctness"] = check
    print(f"correctness: max |logit diff| fp32 CPU vs CUDA {check['max_logit_diff']:.2e} "
          f"({check['max_logit_diff'] / 1e-4:.3f} of 1e-4); codes identical: {check['codes_identical']}", flush=True)  # fmt: skip

    torch.manual_seed(0)
    model = build(get_preset("lavit", "lavit-7b"), device, torch.bfloat16)
    tok = measure_tokenizer(model, args.tokenizer_batch, device, args.repeats)
    results["tokenizer"] = tok
    print(f"tokenizer: {tok['images_per_s']:.0f} images/s; EVA {tok['eva_tflops']:.0f} TFLOP/s "
          f"({tok['eva_tflops'] / peak:.2f} of peak, goal >= 0.60); rest / EVA time {tok['rest_over_eva']:.2f} "
          f"(goal <= 0.25)", flush=True)  # fmt: skip

    stage2 = {}
    for label, visual in (("dynamic", args.dynamic_tokens), ("fixed", model.visual_tokenizer.cfg.num_patches)):
        stage2[label] = measure_stage2(model, args.stage2_batch, args.text_tokens, visual, device, args.repeats)
        s = stage2[label]
        print(f"stage 2 ({label}, {s['length']} tokens/row): {s['tflops']:.0f} TFLOP/s, MFU {s['tflops'] / peak:.2f} "
              f"(goal >= 0.55)", flush=True)  # fmt: skip
    ratio = stage2["fixed"]["seconds"] / stage2["dynamic"]["seconds"]
    stage2["fixed_over_dynamic"] = ratio
    results["stage2"] = stage2
    print(f"stage 2: fixed / dynamic step time {ratio:.2f} (paper 30 h / 18 h = 1.67)", flush=True)
    torch.cuda.empty_cache()

    results["sampling"] = {}
    modes = [("dynamic cache", False, "none")]
    captures = [c for c in args.captures.split(",") if c]
    modes += [(f"static cache, step {c}" if c != "none" else "static cache", True, c) for c in captures]
    for label, static, capture in modes:  # the first (warm-up) run of a captured mode includes its compilation
        sampling = measure_sampling(model, args.prompts, args.sampling_tokens, device, args.repeats, static, capture)
        bound_ms = 1e3 * sampling["weight_bytes"] / (bandwidth * 1e12)
        sampling["bound_ms"] = bound_ms
        results["sampling"][label] = sampling
        print(f"sampling ({2 * args.prompts} rows, {label}): {sampling['ms_per_step']:.1f} ms/step; weight-read bound "
              f"{bound_ms:.1f} ms ({sampling['ms_per_step'] / bound_ms:.1f}x the bound, goal <= 2x)", flush=True)  # fmt: skip

    if args.out:
        from harness.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from harness.errors import run_cli

    sys.exit(run_cli(main))
