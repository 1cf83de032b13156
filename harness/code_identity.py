"""Which code made a run or an evaluation, and whether today's checkout is still that code.

A finished training run (run.json) and a finished evaluation (results.json) record `code_record()`: the SHA-256
of the source of every module of this checkout (`harness`, `model`, `train`, `eval`, `reproduce`) that the process
had loaded when it finished, plus the git revision. A reuse check (`changed_files`) rehashes those same files.

Why the modules the process loaded, rather than whole package trees: a change to VILA's projector should not
retrain LaVIT's runs, and a change to the evaluation code should not retrain anything. Recording at the end of the
process catches the modules a stage imports lazily (inside functions) as well. What it misses: a module that the
new code imports and the old code did not -- but then the importing module changed, and that is caught.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "model", "train", "eval", "reproduce")


def _digest(path: Path) -> str:
    """The SHA-256 of what the module does: its syntax tree without docstrings (comments, blank lines and line
    numbers are not in the tree), so an edit to documentation alone does not make every run stale. A file that does
    not parse is hashed as bytes."""
    source = path.read_bytes()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return hashlib.sha256(source).hexdigest()[:16]
    return hashlib.sha256(ast.dump(_without_docstrings(tree)).encode()).hexdigest()[:16]


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def loaded_sources(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Checkout-relative path -> short SHA-256, for every loaded module of this checkout's `packages`."""
    out = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        try:
            relative = path.relative_to(CHECKOUT)
        except ValueError:
            continue
        if relative.parts[0] in packages and path.is_file():
            out[relative.as_posix()] = _digest(path)
    return dict(sorted(out.items()))


def code_record(packages: tuple[str, ...] = ("harness", "model", "train")) -> dict[str, Any]:
    """What made a result: the loaded sources of `packages` (training: harness, model, train; an evaluation adds
    eval), their fingerprint, and the git revision."""
    from harness.cpu_kernels import kernel_set
    from harness.io import git_revision

    files = loaded_sources(packages)
    fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    # The CPU kernel set is part of what made a float result (harness/cpu_kernels.py); recorded, not compared.
    return {"fingerprint": fingerprint, "git_revision": git_revision(CHECKOUT), "files": files,
            "cpu_kernels": kernel_set()}


def changed_files(record: Any) -> list[str] | None:
    """The recorded files whose source differs today (or is gone); None when there is no usable record (made by
    code older than these records: treated as changed)."""
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not record["files"]:
        return None
    changed = []
    for relative, digest in record["files"].items():
        path = CHECKOUT / relative
        if not path.is_file() or _digest(path) != digest:
            changed.append(relative)
    return changed


def made_at(record: Any) -> str:
    """"<short revision>" of the code that made it ("+dirty" kept), or "an unknown revision"."""
    revision = record.get("git_revision") if isinstance(record, dict) else None
    if not revision or revision == "unknown":
        return "an unknown revision"
    sha, _, dirty = revision.partition("+")
    return sha[:10] + (f"+{dirty}" if dirty else "")


def describe_change(record: Any, limit: int = 3) -> str:
    """One phrase: which files changed since the record (or that there is no record)."""
    changed = changed_files(record)
    if changed is None:
        return "no record of its code (made before code records existed)"
    shown = ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")
    return f"changed since: {shown}"
