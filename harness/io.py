"""Atomic file writes, file digests and provenance: an output is either complete or absent, can be checked, and says
where it came from."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for a moment)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and an atomic rename.

    The file gets the mode a plain `open(path, "w")` would give (0666 minus the umask: group-readable under the
    usual 022), not mkstemp's private 0600, so teammates on a shared cluster can read checkpoints and results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_digest(path: str | Path, chunk: int = 1 << 24) -> dict[str, Any]:
    """{"size": bytes, "sha256": hex digest} of a file, read in chunks (checkpoint manifests, the mini release)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def git_revision(root: str | Path | None = None) -> str:
    """The commit of the checkout (with '+dirty' when there are uncommitted changes), or 'unknown'."""
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def _provenance() -> tuple[tuple[str, str], ...]:
    info = {"git": git_revision(), "python": platform.python_version()}
    # Versions from package metadata: importing torch/diffusers just to read a version costs seconds.
    for name in ("torch", "transformers", "diffusers", "lm_eval", "pycocoevalcap", "torch-fidelity", "pandas"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(info.items())


def provenance() -> dict[str, str]:
    """What produced a number: code revision and library versions (computed once per process)."""
    return dict(_provenance())
