"""Streaming training data: webdataset tar shards (img2dataset layout) and JSONL text, mixed and packed.

Every stream here is an iterator with `state_dict()` / `load_state_dict()`:

* memory is flat in the size of the data set (one sample, one open file at a time);
* the order is a pure function of the seed (shard/file order is permuted per epoch with `seed + epoch`);
* the state is a few integers (epoch, position in the shard order, byte offset in the current file), so the
  position in the stream is part of every checkpoint and a resumed run reads exactly the samples an
  uninterrupted run would have read, in O(1) (a seek, no replay);
* corrupt or undecodable samples (an image PIL cannot read, a missing caption, a bad JSON line, a truncated
  tar) are skipped and counted by reason in `stats()`, never fatal.

Ranks split the stream in one of two ways (`partition`):
* "sample": every rank walks the same global order and keeps every world_size-th sample, skipping the others
  without decoding them. The union of the ranks' micro-batches is then the same set of samples at any world
  size, so 1 process and N processes train on identical global batches.
* "shard": rank r reads shards r, r+W, ... only (less I/O at scale; needs at least as many shards as ranks).

img2dataset layout: a tar shard holds consecutive members `KEY.jpg`, `KEY.txt`, `KEY.json` (any subset); a
sample is the run of members sharing KEY (the file name up to its first dot), as in webdataset.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

from harness.data import epoch_order, expand_files

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class StatefulStream(Protocol):
    def __iter__(self) -> Iterator[Any]: ...
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def stats(self) -> dict[str, int]: ...


class _FileStream:
    """Shared walk over files: epochs, per-epoch permutation, rank partition, skip counters."""

    def __init__(self, files: list[str], seed: int, rank: int, world_size: int, partition: Literal["sample", "shard"]):
        if partition not in ("sample", "shard"):
            raise ValueError(f"partition must be 'sample' or 'shard', got {partition!r}")
        if partition == "shard" and len(files) < world_size:
            raise ValueError(
                f"partition='shard' needs at least one file per rank: {len(files)} files for {world_size} ranks "
                f"(use partition='sample' or write more shards)"
            )
        self.files, self.seed, self.rank, self.world_size, self.partition = files, seed, rank, world_size, partition
        self.epoch = 0  # passes over the data completed
        self.order_pos = 0  # index into this epoch's file order
        self.offset = 0  # byte offset in the current file of the next unread record
        self.global_index = 0  # records seen in the global order this epoch ("sample" partition)
        self.skipped: dict[str, int] = {}  # reason -> count

    def _my_files(self) -> list[str]:
        order = epoch_order(len(self.files), self.seed, self.epoch)
        if self.partition == "shard":
            order = order[self.rank :: self.world_size]
        return [self.files[i] for i in order]

    def _owns_next(self) -> bool:
        """Whether the record at the current global index belongs to this rank (and advances the index)."""
        if self.partition == "shard":
            return True
        mine = self.global_index % self.world_size == self.rank
        self.global_index += 1
        return mine

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _next_file(self) -> None:
        self.order_pos += 1
        self.offset = 0
        if self.order_pos >= len(self._my_files()):
            self.epoch += 1
            self.order_pos = 0
            self.global_index = 0

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "order_pos": self.order_pos,
            "offset": self.offset,
            "global_index": self.global_index,
            "skipped": dict(self.skipped),
            "num_files": len(self.files),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_files"] != len(self.files):
            raise ValueError(f"stream state was saved over {state['num_files']} files, now there are {len(self.files)}")
        self.epoch, self.order_pos, self.offset = state["epoch"], state["order_pos"], state["offset"]
        self.global_index, self.skipped = state["global_index"], dict(state["skipped"])

    def stats(self) -> dict[str, int]:
        return {f"skipped_{k}": v for k, v in sorted(self.skipped.items())}


# ---------------------------------------------------------------------------------------------
# Image-text pairs from tar shards.


@dataclass
class ImageTextSample:
    key: str  # sample key in the shard
    image: Any  # PIL.Image in RGB
    text: str  # caption from KEY.txt (or the "caption" field of KEY.json)
    meta: dict[str, Any]  # KEY.json, if present


def sample_key(member_name: str) -> tuple[str, str]:
    """`dir/000123.jpg` -> (`dir/000123`, `jpg`); the key ends at the first dot of the base name."""
    head, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


class ImageTextShards(_FileStream):
    """Samples of webdataset/img2dataset tar shards, decoded to `ImageTextSample`."""

    def __init__(
        self,
        shards: Sequence[str],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        partition: Literal["sample", "shard"] = "sample",
        require_text: bool = True,
    ):
        super().__init__(expand_files(shards, "tar shard"), seed, rank, world_size, partition)
        self.require_text = require_text
        self._tar: tarfile.TarFile | None = None
        self._tar_path: str | None = None
        self._lookahead: tarfile.TarInfo | None = None

    def _open(self, path: str) -> None:
        self._close()
        handle = open(path, "rb")
        handle.seek(self.offset)
        # "r:" reads headers lazily from the current position: a resume is a seek, not a replay.
        self._tar = tarfile.open(fileobj=handle, mode="r:")
        self._tar_path = path
        self._lookahead = None

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.fileobj.close()
            self._tar.close()
        self._tar, self._tar_path, self._lookahead = None, None, None

    def _read_group(self) -> list[tarfile.TarInfo] | None:
        """The members of the next sample (same key), or None at the end of the shard."""
        group: list[tarfile.TarInfo] = []
        while True:
            member = self._lookahead if self._lookahead is not None else self._tar.next()
            self._lookahead = None
            if member is None:
                return group or None
            if not member.isfile():
                continue
            if group and sample_key(member.name)[0] != sample_key(group[0].name)[0]:
                self._lookahead = member
                return group
            group.append(member)

    def _decode(self, group: list[tarfile.TarInfo]) -> ImageTextSample | None:
        from PIL import Image

        key = sample_key(group[0].name)[0]
        parts = {sample_key(m.name)[1]: m for m in group}
        image_member = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        if image_member is None:
            self._skip("no_image")
            return None
        meta: dict[str, Any] = {}
        if "json" in parts:
            try:
                meta = json.loads(self._tar.extractfile(parts["json"]).read().decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self._skip("bad_json")
                return None
        text = None
        if "txt" in parts:
            try:
                text = self._tar.extractfile(parts["txt"]).read().decode("utf-8").strip()
            except UnicodeDecodeError:
                self._skip("bad_text")
                return None
        elif isinstance(meta.get("caption"), str):
            text = meta["caption"].strip()
        if self.require_text and not text:
            self._skip("no_text")
            return None
        try:
            with Image.open(io.BytesIO(self._tar.extractfile(image_member).read())) as img:
                image = img.convert("RGB")  # forces the full decode: truncated files fail here
        except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            self._skip("undecodable_image")
            return None
        return ImageTextSample(key=key, image=image, text=text or "", meta=meta)

    def __next__(self) -> ImageTextSample:
        files_tried_without_sample = 0
        while True:
            path = self._my_files()[self.order_pos]
            if self._tar_path != path:
                try:
                    self._open(path)
                except (OSError, tarfile.TarError):
                    self._skip("unreadable_shard")
                    self._close()
                    self._next_file()
                    files_tried_without_sample += 1
                    self._check_progress(files_tried_without_sample)
                    continue
            try:
                group = self._read_group()
            except (OSError, tarfile.TarError, EOFError):
                self._skip("truncated_shard")
                group = None
            if group is None:
                self._close()
                self._next_file()
                files_tried_without_sample += 1
                self._check_progress(files_tried_without_sample)
                continue
            # The next sample starts at the member read ahead (or at the end of the archive).
            self.offset = self._lookahead.offset if self._lookahead is not None else self._tar.offset
            if not self._owns_next():
                continue
            try:
                sample = self._decode(group)
            except (OSError, tarfile.TarError, EOFError):  # member data cut short
                self._skip("truncated_shard")
                sample = None
            if sample is not None:
                return sample

    def _check_progress(self, files_without_sample: int) -> None:
        if files_without_sample > 2 * len(self.files) + 2:
            raise RuntimeError(f"no readable sample in any of {len(self.files)} shards (skipped: {self.skipped})")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._close()
        super().load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# JSONL files: text documents (LaVIT's text corpus) and whole records (VILA's MMC4 documents).


class JsonlLines(_FileStream):
    """One item per JSON line of JSONL files, read line by line (resumable at the byte offset). `_decode(line)`
    turns a line into the item, or returns None after counting why it skipped it."""

    def __init__(self, files: Sequence[str], seed: int = 0, rank: int = 0, world_size: int = 1,
                 partition: Literal["sample", "shard"] = "sample"):  # fmt: skip
        super().__init__(expand_files(files, "JSONL"), seed, rank, world_size, partition)
        self._handle = None
        self._path: str | None = None

    def _decode(self, line: bytes) -> Any | None:
        raise NotImplementedError

    def __next__(self) -> Any:
        empty_files = 0
        while True:
            path = self._my_files()[self.order_pos]
            if self._path != path:
                if self._handle is not None:
                    self._handle.close()
                self._handle = open(path, "rb")
                self._handle.seek(self.offset)
                self._path = path
            line = self._handle.readline()
            if not line:
                self._handle.close()
                self._handle, self._path = None, None
                self._next_file()
                empty_files += 1
                if empty_files > 2 * len(self.files) + 2:
                    raise RuntimeError(f"no readable record in any of {len(self.files)} JSONL files (skipped: {self.skipped})")
                continue
            self.offset += len(line)
            if not line.strip() or not self._owns_next():
                continue
            empty_files = 0
            item = self._decode(line)
            if item is not None:
                return item

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._path = None, None
        super().load_state_dict(state)


class JsonlText(JsonlLines):
    """Documents (the `text_key` field of each JSON line) from JSONL files."""

    def __init__(self, files: Sequence[str], seed: int = 0, rank: int = 0, world_size: int = 1,
                 partition: Literal["sample", "shard"] = "sample", text_key: str = "text"):  # fmt: skip
        super().__init__(files, seed, rank, world_size, partition)
        self.text_key = text_key

    def _decode(self, line: bytes) -> str | None:
        try:
            text = json.loads(line)[self.text_key]
        except (ValueError, KeyError, TypeError):
            self._skip("bad_json_line")
            return None
        if not isinstance(text, str) or not text:
            self._skip("no_text")
            return None
        return text


class JsonlRecords(JsonlLines):
    """JSON objects from JSONL files (e.g. MMC4 documents), whole."""

    def _decode(self, line: bytes) -> dict | None:
        try:
            record = json.loads(line)
        except ValueError:
            self._skip("bad_json_line")
            return None
        if not isinstance(record, dict):
            self._skip("not_an_object")
            return None
        return record


# ---------------------------------------------------------------------------------------------
# Combinators: map, mixture, packing, batching. Each forwards state to the streams it wraps.


class Mapped:
    """`fn(item)` over a stream; `fn` returning None skips the item (counted as `skipped_map`)."""

    def __init__(self, stream: StatefulStream, fn: Callable[[Any], Any]):
        self.stream, self.fn, self.dropped = stream, fn, 0

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            out = self.fn(next(self.stream))
            if out is not None:
                return out
            self.dropped += 1

    def state_dict(self):
        return {"inner": self.stream.state_dict(), "dropped": self.dropped}

    def load_state_dict(self, state):
        self.stream.load_state_dict(state["inner"])
        self.dropped = state["dropped"]

    def stats(self):
        return {**self.stream.stats(), **({"skipped_map": self.dropped} if self.dropped else {})}


class Mixture:
    """Draw each item from one of several named streams with fixed proportions.

    Draw k picks its source from a generator seeded by (seed, k) alone, so the sequence of sources is a pure
    function of the seed and the state is just k plus the sources' own states. Items come out as
    `(source_name, item)`.
    """

    def __init__(self, streams: dict[str, StatefulStream], weights: dict[str, float], seed: int = 0):
        if set(streams) != set(weights):
            raise ValueError(f"mixture streams {sorted(streams)} and weights {sorted(weights)} name different sources")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        self.names = sorted(n for n in streams if weights[n] > 0)
        self.streams = streams
        total = sum(weights[n] for n in self.names)
        self.cumulative = []
        acc = 0.0
        for name in self.names:
            acc += weights[name] / total
            self.cumulative.append(acc)
        self.seed = seed
        self.draws = 0  # items drawn so far
        self.counts = {n: 0 for n in self.names}  # items drawn per source

    def __iter__(self):
        return self

    def choose(self, k: int) -> str:
        u = random.Random(f"mix/{self.seed}/{k}").random()
        for name, edge in zip(self.names, self.cumulative):
            if u < edge:
                return name
        return self.names[-1]

    def __next__(self):
        name = self.choose(self.draws)
        self.draws += 1
        self.counts[name] += 1
        return name, next(self.streams[name])

    def state_dict(self):
        return {"draws": self.draws, "counts": dict(self.counts), "streams": {n: s.state_dict() for n, s in self.streams.items()}}

    def load_state_dict(self, state):
        self.draws, self.counts = state["draws"], dict(state["counts"])
        for name, sub in state["streams"].items():
            self.streams[name].load_state_dict(sub)

    def stats(self):
        out = {f"drawn_{n}": c for n, c in self.counts.items()}
        for name, stream in self.streams.items():
            out.update({f"{name}/{k}": v for k, v in stream.stats().items()})
        return out


@dataclass
class PackPiece:
    """A document to pack: its length in positions, whether it may be cut across sequences, and its payload."""

    length: int  # positions it occupies
    splittable: bool  # text may continue in the next sequence; an image-text sample may not
    payload: Any  # whatever the stage needs to build tensors for positions [start, end)


@dataclass
class PackedSequence:
    """One training sequence: slices (piece payload, start, end) laid end to end, then padding."""

    segments: list[tuple[Any, int, int]]  # (payload, start within the piece, end within the piece)
    length: int  # used positions (<= seq_len); the rest is padding


class Packer:
    """Greedy packing of pieces into sequences of exactly `seq_len` positions.

    A splittable piece that does not fit fills the sequence and continues at the start of the next one; an
    unsplittable piece that does not fit closes the sequence (padding) and opens the next. An unsplittable piece
    longer than `seq_len` is skipped and counted. Segment boundaries are kept so the stage can stop attention
    from crossing samples. Resume-exact: the state is the upstream state from *before* the piece in progress
    plus how far into it we are, so a restored packer re-reads that piece and continues from the same position.
    """

    def __init__(self, stream: StatefulStream, seq_len: int, to_piece: Callable[[Any], PackPiece | None]):
        self.stream, self.seq_len, self.to_piece = stream, seq_len, to_piece
        self._pending: PackPiece | None = None
        self._pending_offset = 0
        self._state_before_pending = stream.state_dict()
        self.too_long = 0

    def __iter__(self):
        return self

    def _pull(self) -> PackPiece:
        skipped_in_a_row = 0
        while True:
            self._state_before_pending = self.stream.state_dict()
            piece = self.to_piece(next(self.stream))
            if piece is not None and piece.length > 0 and (piece.splittable or piece.length <= self.seq_len):
                return piece
            if piece is not None and piece.length > self.seq_len:
                self.too_long += 1
            skipped_in_a_row += 1
            if skipped_in_a_row >= 10_000:
                raise RuntimeError(f"10000 documents in a row were empty or longer than seq_len={self.seq_len} and unsplittable")

    def __next__(self) -> PackedSequence:
        segments: list[tuple[Any, int, int]] = []
        used = 0
        while used < self.seq_len:
            if self._pending is None:
                self._pending, self._pending_offset = self._pull(), 0
            piece, start = self._pending, self._pending_offset
            remaining = piece.length - start
            room = self.seq_len - used
            if remaining <= room:
                segments.append((piece.payload, start, piece.length))
                used += remaining
                self._pending = None
            elif piece.splittable:
                segments.append((piece.payload, start, start + room))
                used += room
                self._pending_offset = start + room
            else:
                if not segments:  # cannot happen: longer pieces were skipped in _pull
                    raise AssertionError("unsplittable piece longer than the sequence")
                break  # pad the rest; the piece opens the next sequence
        return PackedSequence(segments=segments, length=used)

    def state_dict(self):
        if self._pending is None:
            return {"stream": self.stream.state_dict(), "pending_offset": -1, "too_long": self.too_long}
        return {"stream": self._state_before_pending, "pending_offset": self._pending_offset, "too_long": self.too_long}

    def load_state_dict(self, state):
        self.stream.load_state_dict(state["stream"])
        self.too_long = state["too_long"]
        self._pending = None
        if state["pending_offset"] >= 0:
            self._pending, self._pending_offset = self._pull(), state["pending_offset"]

    def stats(self):
        return {**self.stream.stats(), **({"skipped_too_long": self.too_long} if self.too_long else {})}


class Strided:
    """Items rank, rank + W, rank + 2W, ... of a stream that every rank computes identically."""

    def __init__(self, stream: StatefulStream, rank: int, world_size: int):
        self.stream, self.rank, self.world_size = stream, rank, world_size

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(self.rank):
            next(self.stream)
        item = next(self.stream)
        for _ in range(self.world_size - self.rank - 1):
            next(self.stream)
        return item

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def stats(self):
        return self.stream.stats()


class Batched:
    """`collate([next(stream) for _ in range(batch_size)])`; holds nothing between batches."""

    def __init__(self, stream: StatefulStream, batch_size: int, collate: Callable[[list[Any]], Any]):
        self.stream, self.batch_size, self.collate = stream, batch_size, collate

    def __iter__(self):
        return self

    def __next__(self):
        return self.collate([next(self.stream) for _ in range(self.batch_size)])

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def stats(self):
        return self.stream.stats()


# ---------------------------------------------------------------------------------------------
# Writers in the same layouts (tests, benchmarks, and converting small local data sets).


def write_image_text_shard(path: str | Path, samples: Sequence[tuple[str, bytes, str | None, dict | None]]) -> Path:
    """A tar shard in the img2dataset layout from (key, image bytes, caption or None, json or None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for key, image_bytes, caption, meta in samples:
            members = [(f"{key}.jpg", image_bytes)]
            if caption is not None:
                members.append((f"{key}.txt", caption.encode("utf-8")))
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode("utf-8")))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0  # byte-identical shards for identical inputs
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40), "white": (245, 245, 245), "black": (15, 15, 15)}
_SHAPES = ("circle", "square", "triangle")


def synthetic_image_text(index: int, size: int = 64) -> tuple[bytes, str]:
    """A JPEG of a colored shape on a colored background and the caption that describes it (seeded by index)."""
    from PIL import Image, ImageDraw

    rng = random.Random(index)
    colors = list(_COLORS)
    fg, bg = rng.sample(colors, 2)
    shape = rng.choice(_SHAPES)
    image = Image.new("RGB", (size, size), _COLORS[bg])
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_COLORS[fg])
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=_COLORS[fg])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=_COLORS[fg])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), f"a {fg} {shape} on a {bg} background"


def write_synthetic_image_text_shards(directory: str | Path, num_shards: int, per_shard: int, image_size: int = 64) -> list[Path]:
    """Shards `shard-00000.tar`, ... of synthetic captioned images (deterministic)."""
    paths = []
    for s in range(num_shards):
        samples = []
        for i in range(per_shard):
            index = s * per_shard + i
            jpeg, caption = synthetic_image_text(index, image_size)
            samples.append((f"{index:09d}", jpeg, caption, {"caption": caption, "key": f"{index:09d}"}))
        paths.append(write_image_text_shard(Path(directory) / f"shard-{s:05d}.tar", samples))
    return paths


def write_synthetic_jsonl(path: str | Path, num_docs: int, seed: int = 0, words: int = 40) -> Path:
    """JSONL documents of simple sentences (deterministic), for text-only mini runs."""
    from harness.io import atomic_write_text

    rng = random.Random(seed)
    nouns = ["cat", "river", "theorem", "engine", "garden", "market", "proof", "signal", "city", "forest"]
    verbs = ["follows", "crosses", "explains", "drives", "feeds", "changes", "supports", "reaches"]
    lines = []
    for d in range(num_docs):
        sentence = []
        for _ in range(max(1, words // 5)):
            sentence.append(f"the {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}.")
        lines.append(json.dumps({"text": " ".join(sentence), "id": d}))
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")

