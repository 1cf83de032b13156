"""The committed mini release on disk (`model/mini_release/`): where it lies, its manifest, its files checked against
the manifest's SHA-256. How the stand-ins are trained and reported is `reproduce/mini_release.py`; this module is the
part the table machinery needs (a mini chain names the release's files in its run configs), kept below both.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import InputError
from harness.io import file_digest

CHECKOUT = Path(__file__).resolve().parent.parent
RELEASE_DIR = CHECKOUT / "model" / "mini_release"
MANIFEST = "MANIFEST.json"


def read_manifest(release_dir: Path = RELEASE_DIR) -> dict:
    """The release's MANIFEST.json (an InputError saying how to build it when there is none)."""
    path = release_dir / MANIFEST
    if not path.is_file():
        raise InputError(f"no mini release at {release_dir} ({MANIFEST} missing): build it with python reproduce/mini_release.py build")
    return json.loads(path.read_text())


def release_file(part: str, release_dir: Path = RELEASE_DIR) -> Path:
    """The committed weights file of `part`, checked against the manifest's SHA-256 (a damaged file is an error)."""
    entry = read_manifest(release_dir)["parts"].get(part)
    if entry is None:
        raise InputError(f"the mini release at {release_dir} has no part {part!r}")
    path = release_dir / entry["file"]
    if not path.is_file():
        raise InputError(f"mini release file missing: {path}")
    digest = file_digest(path)["sha256"]
    if digest != entry["sha256"]:
        raise InputError(f"mini release file {path}: SHA-256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…")
    return path
