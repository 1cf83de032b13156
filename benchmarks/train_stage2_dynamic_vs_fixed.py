"""Stage-2 training cost with the dynamic tokenizer vs the fixed-length one (paper Table 3b context: 18 h vs 30 h).

One run, side by side, same machine and settings:
1. a short stage-1a mini run trains the selector towards rho = 1/3 (so "dynamic" keeps about a third of the
   patches; an untrained selector keeps an arbitrary fraction);
2. stage 2 (mini preset, image-text documents only, so the visual sequence length is what differs) with that
   tokenizer, once as is ("dynamic") and once with `fixed_length=true` (every patch becomes a token);
3. from metrics.jsonl: step time, tokens/s, image-text pairs per step and per second (excluding the first
   `--warmup` steps), and the ratio fixed / dynamic of the time per image-text pair, the quantity behind the
   paper's 30 h vs 18 h.

    .venv/bin/python benchmarks/train_stage2_dynamic_vs_fixed.py [--steps 12] [--warmup 2] [--out DIR]

Mini sizes: the tiny tokenizer has N = 16 patches per image (the paper's has 256), so the sequence-length gap,
and with it the ratio, is smaller here than at paper scale; the printed keep ratio says how many patches stayed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="stage-2 steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--tokenizer-steps", type=int, default=40, help="stage-1a steps that train the selector")
    parser.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()

    from harness.config import get_preset, resolve
    from harness.io import atomic_write_json, provenance
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)
    from train.stages import run_stage

    work = Path(args.out or tempfile.mkdtemp(prefix="bench_dyn_fixed_"))
    tok_dir = work / "stage1a"
    tok_cfg = resolve(
        get_preset("train/tokenizer", "mini"),
        overrides=[f"loop.steps={args.tokenizer_steps}", f"vq_start_step={args.tokenizer_steps // 2}", "loop.checkpoint_every=1000"],
    )
    run_stage("tokenizer", tok_cfg, tok_dir)

    results = {}
    for variant, fixed in (("dynamic", False), ("fixed", True)):
        cfg = resolve(
            get_preset("train/unified", "mini"),
            overrides=[
                f"tokenizer_checkpoint={tok_dir}",
                f"model.tokenizer.fixed_length={str(fixed).lower()}",
                "data.text_to_image_text=[0.0, 1.0]",  # image-text documents only
                f"loop.steps={args.steps}",
                "loop.checkpoint_every=1000",
            ],
        )
        out = work / variant
        run_stage("unified", cfg, out)
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][args.warmup :]
        step_time = statistics.mean(l["step_time_s"] for l in lines)
        data_time = statistics.mean(l["data_time_s"] for l in lines)  # reading + on-the-fly tokenization + packing
        pairs_per_step = statistics.mean(l["image_docs"] for l in lines)
        results[variant] = {
            "step_time_s": step_time,
            "tokens_per_s": statistics.mean(l["tok_per_s"] for l in lines),
            "image_text_pairs_per_step": pairs_per_step,
            "visual_tokens_per_image": sum(l["image_tokens"] for l in lines) / max(1.0, sum(l["image_docs"] for l in lines)),
            "seconds_per_image_text_pair": step_time / pairs_per_step,
            "data_time_s": data_time,
            "model_seconds_per_image_text_pair": (step_time - data_time) / pairs_per_step,  # LLM forward/backward/step
            "final_loss": lines[-1]["loss"],
        }
    ratio = results["fixed"]["seconds_per_image_text_pair"] / results["dynamic"]["seconds_per_image_text_pair"]
    model_ratio = results["fixed"]["model_seconds_per_image_text_pair"] / results["dynamic"]["model_seconds_per_image_text_pair"]
    report = {
        "variants": results,
        "fixed_over_dynamic_time_per_pair": ratio,
        "fixed_over_dynamic_model_time_per_pair": model_ratio,
        "paper_fixed_over_dynamic_training_time": 30 / 18,
        "steps": args.steps,
        "warmup_excluded": args.warmup,
        "provenance": provenance(),
    }
    atomic_write_json(work / "benchmark.json", report)
    print(f"{'variant':<8} {'step s':>8} {'data s':>8} {'tok/s':>9} {'pairs/step':>11} {'vis tok/img':>12} {'s/pair':>8} {'model s/pair':>13}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['step_time_s']:>8.3f} {r['data_time_s']:>8.3f} {r['tokens_per_s']:>9.0f} {r['image_text_pairs_per_step']:>11.2f}"
            f" {r['visual_tokens_per_image']:>12.2f} {r['seconds_per_image_text_pair']:>8.4f} {r['model_seconds_per_image_text_pair']:>13.4f}"
        )
    print(f"fixed / dynamic time per image-text pair: {ratio:.2f}x with on-the-fly tokenization, {model_ratio:.2f}x for the"
          f" model step alone (paper: 30 h / 18 h = {30 / 18:.2f}x)")
    print(f"written: {work / 'benchmark.json'}")


if __name__ == "__main__":
    main()
