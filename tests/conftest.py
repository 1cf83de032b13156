"""Test-session settings: fully offline, deterministic, and sized for a 2-core machine."""

from __future__ import annotations

import os

# No test may reach a model hub or dataset server: the code must work from local paths alone.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two, and immune to oversubscription on a shared machine.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
