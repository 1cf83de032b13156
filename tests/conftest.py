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
