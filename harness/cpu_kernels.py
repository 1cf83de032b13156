"""One CPU kernel set for every result: AVX2, on every x86 machine.

PyTorch, MKL and oneDNN pick their float kernels by the CPU they run on, and AVX2 and AVX-512 kernels round
differently. Training amplifies a last-bit difference like a change of seed: the mini LaVIT's Table 1 VQA is 53.7 on
an AVX-512 machine and 44.7 on an AVX2 one, from the same code and seeds. A committed mini number (and its regression
band) is only checkable if every machine computes it with the same kernels, so every process of this checkout asks
for AVX2 ones, which every x86 machine of the last decade has.

The variables are read lazily (at the first kernel dispatch, MKL call and oneDNN primitive), so setting them when
`harness` is imported is early enough even after `import torch`, as long as no tensor operation has run. A variable
already set in the environment wins: `ATEN_CPU_CAPABILITY=default python reproduce/table1.py` runs on the machine's
fastest kernels (and its numbers are then those of that kernel set, which `kernel_set()` records).
"""

from __future__ import annotations

import os

PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels (elementwise, reductions, softmax, ...)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility branch (matmuls: nn.Linear, attention)
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's JIT kernels (convolutions: patch embedding, the U-Net)
}


def pin() -> None:
    """Ask PyTorch, MKL and oneDNN for AVX2 kernels, unless the environment already chose."""
    for name, value in PINNED_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def kernel_set() -> str:
    """The kernel set PyTorch dispatches to in this process ("AVX2", "AVX512", "DEFAULT", ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
