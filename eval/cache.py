"""The per-sample prediction cache: a JSONL file that a killed evaluation resumes from.

Layout, one JSON object per line:

    {"header": {"format": 1, "identity": {...task, model, dataset hash, shard...}}}
    {"id": 397133, "prediction": "a man riding a horse"}
    {"id": 37777, "skipped": "corrupt_image", "error": "val2014/x.jpg: cannot identify image file"}
    ...

A record counts only once its line ends with a newline: a kill in the middle of a write leaves an
unterminated last line, which is dropped (and counted) when the file is read, and cut off before the next
append so the file stays well formed. Any other malformed line is an error naming the file and line -- the
cache is then not trusted, because a silently skipped record would shrink the metric's denominator.

The header's identity says what produced the predictions; resuming into a cache written with a different
identity (another prompt version, model, dataset, shard layout) is refused with both values in the message.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.errors import EvalInputError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the line layout changes


class CacheError(EvalInputError):
    """A prediction cache that is malformed, inconsistent with the dataset, or made with other settings."""


class CacheSettingsError(CacheError):
    """A well-formed prediction cache written with other settings (task version, model, dataset, shard layout)."""


def normalize(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so identities compare equal across a round trip."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _differences(old: Any, new: Any, key: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new), key=str):
            _differences(old.get(name, _ABSENT), new.get(name, _ABSENT), f"{key}.{name}" if key else str(name), out)
    elif old != new:
        out.append(f"{key or '<root>'}: cache has {old!r}, this run has {new!r}")


def identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable `key: cache has ..., this run has ...` lines for every dotted key whose value differs."""
    out: list[str] = []
    _differences(normalize(stored), normalize(current), "", out)
    return out


@dataclass
class CacheContents:
    path: Path
    header: dict[str, Any] | None = None  # None for an empty (just created, or killed before the header) file
    records: dict[Any, dict[str, Any]] = field(default_factory=dict)  # sample id -> record, in file order
    line_of: dict[Any, int] = field(default_factory=dict)  # sample id -> 1-based line number (for error messages)
    n_dropped_partial: int = 0  # unterminated last lines dropped (0 or 1): a write cut short by a kill
    committed_bytes: int = 0  # file length up to and including the last newline

    @property
    def identity(self) -> dict[str, Any] | None:
        return None if self.header is None else self.header.get("identity")


def read_cache(path: str | Path) -> CacheContents:
    """Parse a cache file; errors name the file, the line and the id. The file must exist."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"prediction cache not found: {path}")
    data = path.read_bytes()
    committed = data.rfind(b"\n") + 1  # everything after the last newline is a write cut short
    contents = CacheContents(path=path, committed_bytes=committed)
    if data[committed:]:
        contents.n_dropped_partial = 1
        log.warning("%s: dropped an unterminated last line (%d bytes) left by an interrupted write", path, len(data) - committed)
    for lineno, raw in enumerate(data[:committed].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(
                f"{path}:{lineno}: malformed JSON ({err}); this is not an interrupted write (the line is complete), "
                "so the cache is not trusted -- delete it to recompute"
            ) from None
        if lineno == 1:
            if not (isinstance(obj, dict) and isinstance(obj.get("header"), dict)):
                raise CacheError(f"{path}:1: expected a header line {{\"header\": {{...}}}}, got {raw[:200]!r}")
            if obj["header"].get("format") != CACHE_FORMAT:
                raise CacheError(f"{path}: cache format {obj['header'].get('format')!r}, this code reads format {CACHE_FORMAT}")
            contents.header = obj["header"]
            continue
        if not isinstance(obj, dict) or "id" not in obj:
            raise CacheError(f"{path}:{lineno}: a record needs an \"id\", got {raw[:200]!r}")
        sample_id = obj["id"]
        if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
            raise CacheError(f"{path}:{lineno}: id must be a string or an integer, got {sample_id!r}")
        if ("prediction" in obj) == ("skipped" in obj):
            raise CacheError(f"{path}:{lineno}: record for id {sample_id!r} needs exactly one of \"prediction\" / \"skipped\"")
        if sample_id in contents.records:
            raise CacheError(
                f"{path}:{lineno}: duplicate id {sample_id!r} (first recorded on line {contents.line_of[sample_id]})"
            )
        contents.records[sample_id] = obj
        contents.line_of[sample_id] = lineno
    return contents


def saved_predictions(path: str | Path) -> dict[Any, Any]:
    """{sample id: prediction} of a finished evaluation's predictions.jsonl (or a shard cache): the header checked,
    records skipped as bad input left out (as in the metric's denominators). Every table and report that reads an
    evaluation's outputs reads them here."""
    return {i: r["prediction"] for i, r in read_cache(path).records.items() if "prediction" in r}


class CacheWriter:
    """Append-only writer: one `append` per finished batch, flushed at once, fsynced every `fsync_every` appends."""

    def __init__(self, path: Path, fsync_every: int = 10):
        self.path = path
        self.fsync_every = max(1, fsync_every)
        self._file = open(path, "ab")
        self._appends = 0

    @classmethod
    def open(cls, path: str | Path, identity: dict[str, Any], fsync_every: int = 10) -> tuple["CacheWriter", CacheContents]:
        """Open `path` for appending predictions made under `identity`; returns the writer and what is cached.

        A fresh (or empty) file gets a header. An existing file must carry the same identity; its unterminated
        last line, if any, is cut off so appends start on a clean line.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            contents = read_cache(path)
        else:
            contents = CacheContents(path=path)
        if contents.header is not None:
            differences = identity_differences(contents.identity or {}, identity)
            if differences:
                raise CacheSettingsError(
                    f"refusing to resume into {path}: it was written with different settings:\n  "
                    + "\n  ".join(differences)
                    + "\nUse another output directory, or delete the file to recompute."
                )
        elif contents.records:  # cannot happen through read_cache (line 1 must be the header); guard anyway
            raise CacheError(f"{path}: records without a header")
        if path.exists() and path.stat().st_size != contents.committed_bytes:
            with open(path, "r+b") as f:
                f.truncate(contents.committed_bytes)
        writer = cls(path, fsync_every)
        if contents.header is None:
            header = {"format": CACHE_FORMAT, "identity": normalize(identity)}
            writer._write_lines([{"header": header}])
            writer.sync()
            contents.header = header
        return writer, contents

    def _write_lines(self, objs: list[dict[str, Any]]) -> None:
        # One write per batch, flushed: a kill mid-write leaves a prefix -- complete lines plus at most one
        # unterminated line, which read_cache drops.
        payload = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objs)
        self._file.write(payload.encode("utf-8"))
        self._file.flush()

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._write_lines(records)
        self._appends += 1
        if self._appends % self.fsync_every == 0:
            self.sync()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
