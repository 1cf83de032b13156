"""benchmarks/gpu_paper_scale.py (a GPU benchmark nobody can run in CI): without CUDA it refuses with one `error:`
line and exit 2; its measuring functions run on the tiny preset on the CPU; its EVA FLOP count equals what
`torch.utils.flop_counter` counts for the encoder."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.config import get_preset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_paper_scale.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_paper_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda_with_one_error_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA" in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.usefixtures("one_thread")
def test_measurements_run_on_the_tiny_preset_on_cpu():
    bench = load_bench()
    import model.lavit.configuration  # noqa: F401

    torch.manual_seed(0)
    model = bench.build(get_preset("lavit", "lavit-tiny"), "cpu", torch.float32)
    tok = bench.measure_tokenizer(model, 2, "cpu", repeats=1)
    assert tok["images_per_s"] > 0 and tok["eva_tflops"] > 0 and math.isfinite(tok["rest_over_eva"])
    s2 = bench.measure_stage2(model, 2, 4, 6, "cpu", repeats=1)
    assert s2["length"] == 12 and s2["tflops"] > 0
    assert all(p.grad is None for p in model.parameters())  # the step leaves no gradients behind
    for static, capture in ((False, "none"), (True, "none"), (True, "compile")):
        sampling = bench.measure_sampling(model, 1, 3, "cpu", repeats=1, static_cache=static, capture=capture,
                                          compile_backend="aot_eager")  # fmt: skip
        assert sampling["ms_per_step"] > 0 and sampling["weight_bytes"] > 0
    check = bench.correctness("cpu")  # CPU against itself: exact
    assert check == {"max_logit_diff": 0.0, "codes_identical": True}


def test_eva_flop_count_matches_torch_flop_counter():
    bench = load_bench()
    import model.lavit.configuration  # noqa: F401
    from model.lavit.tokenizer import build_tokenizer

    tcfg = get_preset("lavit", "lavit-tiny").tokenizer
    from model.lavit.eva_vit import EvaAttention

    tok = build_tokenizer(tcfg).eval()
    for m in tok.modules():  # the explicit attention: the counter does not know CPU's fused SDPA kernel
        if isinstance(m, EvaAttention):
            m.fused = False
    pixels = torch.randn(3, 3, tcfg.image_size, tcfg.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tok.encode_features(pixels)
    assert bench.eva_flops(tcfg, 3) == counter.get_total_flops()
