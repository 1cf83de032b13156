"""Every process of this checkout asks for one CPU kernel set (harness/cpu_kernels.py), so that a committed mini number
is checkable on another machine; the environment can still choose otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.cpu_kernels import PINNED_ENVIRONMENT
from harness.code_identity import CHECKOUT

PROBE = (
    "import json, os, torch, harness; from harness.cpu_kernels import kernel_set, PINNED_ENVIRONMENT;"
    "torch.ones(3).sum();"  # a dispatch after the pin: the kernel set is fixed from here on
    "print(json.dumps({'kernels': kernel_set(), 'env': {k: os.environ.get(k) for k in PINNED_ENVIRONMENT}}))"
)


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_ENVIRONMENT}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=CHECKOUT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_importing_harness_pins_avx2_kernels_even_after_import_torch():
    probe = _probe()
    assert probe["env"] == PINNED_ENVIRONMENT
    assert probe["kernels"] == "AVX2"


def test_a_kernel_set_chosen_in_the_environment_wins_and_is_what_gets_recorded():
    probe = _probe(ATEN_CPU_CAPABILITY="default")
    assert probe["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert probe["kernels"] == "DEFAULT"
    assert probe["env"]["MKL_CBWR"] == "AVX2"  # the others keep their pin
