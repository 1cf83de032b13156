"""Table 3b's cost side: LLM forward+backward time with dynamic visual tokens vs all 256 patches.

    .venv/bin/python benchmarks/lavit_dynamic_vs_fixed.py [--batch 4] [--mean-tokens 94] [--repeats 5] [--out FILE]

Paper: the dynamic tokenizer keeps 94 tokens per image on average instead of 256, and stage-2 pre-training takes
18 h instead of 30 h. Here one small LLaMA (through `LavitForCausalLM`, with LaVIT's 48386-id vocabulary) runs the
same [image; text] training step on two batches that differ only in the number of visual tokens per image:

    dynamic: K_i spread evenly over [mean - spread, mean + spread] (mean exactly 94 by default)
    fixed:   K_i = 256 for every image (Table 3b "Fixed")

with identical captions (`--text-tokens` each) and the one-CE loss over codes and text. Both are timed side by side
in this process (median of `--repeats` steps after a warm-up); the script prints both times and the ratio.
The visual inputs are random vectors in the LLM's input space: the tokenizer's own cost is not part of this
measurement (it is the same frozen ViT for both settings, plus a 12-block merger on 256 positions in both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images (sequences) per step")
    parser.add_argument("--mean-tokens", type=int, default=94, help="mean kept tokens per image (paper: 94)")
    parser.add_argument(
        "--spread", type=int, default=30, help="dynamic K_i spread evenly over [mean - spread, mean + spread]"
    )
    parser.add_argument("--fixed-tokens", type=int, default=256, help="tokens per image without selection (16 x 16)")
    parser.add_argument("--text-tokens", type=int, default=20, help="caption tokens per sequence")
    parser.add_argument("--hidden", type=int, default=256, help="LLM width")
    parser.add_argument("--layers", type=int, default=8, help="LLM depth")
    parser.add_argument("--heads", type=int, default=8, help="LLM attention heads")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (median reported)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on a shared 2-core machine)"
    )
    parser.add_argument("--out", help="also write the result JSON here (atomically)")
    args = parser.parse_args()

    import dataclasses

    import torch

    from harness.io import atomic_write_json, provenance
    from model.lavit.configuration import LavitConfig, LlmConfig, PixelDecoderConfig
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.tokenizer_config import tiny as tokenizer_tiny

    torch.set_num_threads(args.threads)
    # Paper vocabulary (K = 16384 codes); a small LLM; the tiny tokenizer only provides the id layout here.
    tokenizer = dataclasses.replace(tokenizer_tiny(), codebook_size=16384, llm_hidden_size=args.hidden)
    cfg = LavitConfig(
        tokenizer=tokenizer,
        llm=LlmConfig(
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            num_kv_heads=args.heads,
            intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
            max_position_embeddings=512,
        ),
        pixel_decoder=PixelDecoderConfig(enabled=False),
    )
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg)).train()
    g = torch.Generator().manual_seed(0)
    captions = [torch.randint(3, 32000, (args.text_tokens,), generator=g) for _ in range(args.batch)]
    # Evenly spread around the mean (symmetric, so the batch mean is exactly --mean-tokens).
    offsets = torch.linspace(-args.spread, args.spread, args.batch) if args.batch > 1 else torch.zeros(1)
    dynamic_k = [args.mean_tokens + int(round(float(o))) for o in offsets]
    settings = {"dynamic": dynamic_k, "fixed": [args.fixed_tokens] * args.batch}

    def step(ks: list[int]) -> float:
        items = []
        for k, caption in zip(ks, captions):
            feats = torch.randn(k, args.hidden, generator=g) * 0.02
            codes = torch.randint(0, tokenizer.codebook_size, (k,), generator=g)
            items.append(model.understanding_item(feats, caption, codes, append_eos=True))
        start = time.perf_counter()
        loss = model.loss_on(items).loss
        loss.backward()
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    for ks in settings.values():  # warm-up
        step(ks)
    timings = {name: [] for name in settings}
    for _ in range(args.repeats):  # interleaved, so machine-load drift hits both settings alike
        for name, ks in settings.items():
            timings[name].append(step(ks))
    results = {}
    for name, ks in settings.items():
        seq = [k + 2 + args.text_tokens + 1 for k in ks]
        results[name] = {
            "visual_tokens_mean": statistics.mean(ks),
            "sequence_length_max": max(seq),
            "tokens_in_batch": sum(seq),
            "seconds_median": round(statistics.median(timings[name]), 4),
            "seconds_all": [round(t, 4) for t in timings[name]],
        }
    report = {
        "benchmark": "lavit_dynamic_vs_fixed",
        "llm": dataclasses.asdict(cfg.llm),
        "vocab_size": cfg.vocab_size,
        "batch": args.batch,
        "threads": args.threads,
        **results,
        "time_ratio_fixed_over_dynamic": round(
            results["fixed"]["seconds_median"] / results["dynamic"]["seconds_median"], 2
        ),
        "paper_time_ratio": round(30 / 18, 2),
        "provenance": provenance(),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
