"""One CPU kernel set for every result.

PyTorch, MKL and oneDNN pick their float kernels by the CPU they run on, and their kernels round differently.
Training amplifies a last-bit difference like a change of seed: from the same code and seeds, the mini LaVIT's Table 1
VQA is 53.7 on the AVX-512 machines of earlier stops and 44.7 on an AVX2-only AMD EPYC. A committed mini number (and
its regression band) is only checkable where it is computed with the same kernels, so every process of this checkout
asks for them when `harness` is imported:

- PyTorch's own vectorised kernels (elementwise, reductions, softmax, ...): AVX2, on any x86 CPU that has it.
- MKL (matmuls: nn.Linear, attention): conditional numerical reproducibility (CNR) mode, AVX2 branch. MKL honours the
  AVX2 branch on Intel CPUs only; elsewhere (this project's AMD EPYC machines) it runs its CNR AUTO branch: fixed
  cache sizes, deterministic reductions, static scheduling. CNR changes the bits: any MKL_CBWR value, AUTO too, moves
  stage 1a's loss at step 4 by one ulp against MKL's default mode on this AMD machine. Bit-equality across CPU vendors
  would need MKL_CBWR=COMPATIBLE (SSE2 code, slower), not chosen.
- oneDNN (convolutions: patch embedding, the U-Net): JIT kernels up to AVX2.

The variables are read lazily (at the first kernel dispatch, MKL call and oneDNN primitive), so setting them when
`harness` is imported is early enough even after `import torch`, as long as no tensor operation has run. A variable
already set in the environment wins: `ATEN_CPU_CAPABILITY=avx512 python reproduce/table1.py` runs PyTorch's AVX-512
kernels, and its numbers are then those of that kernel set, which `kernel_set()` records.
"""

from __future__ import annotations

import os

PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def pin() -> None:
    """Ask PyTorch, MKL and oneDNN for AVX2 kernels, unless the environment already chose."""
    for name, value in PINNED_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def kernel_set() -> str:
    """The kernel set PyTorch dispatches to in this process ("AVX2", "AVX512", "DEFAULT", ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
