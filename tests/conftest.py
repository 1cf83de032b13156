"""Test-session settings: fully offline, deterministic, and sized for a 2-core machine."""

from __future__ import annotations

import os

# No test may reach a model hub or dataset server: the code must work from local paths alone.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import harness  # noqa: E402,F401  (pins the CPU kernel set, harness/cpu_kernels.py, before torch runs anything)
import torch  # noqa: E402

torch.manual_seed(0)
SESSION_THREADS = min(2, os.cpu_count() or 1)
torch.set_num_threads(SESSION_THREADS)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two, and immune to oversubscription on a shared machine.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def thread_count_restored(request):
    """Every module leaves the session's thread count as it found it (a module-level `torch.set_num_threads` leaks
    into every later module: the resume tests compare this process against a subprocess computing the same steps,
    and CPU float reductions depend on the thread count)."""
    yield
    threads = torch.get_num_threads()
    assert threads == SESSION_THREADS, (
        f"torch's thread count is {threads} after {request.module.__name__}, not the session's {SESSION_THREADS}: "
        "a test module changed it without restoring it (at import, or in a test; the one_thread fixture restores)"
    )
