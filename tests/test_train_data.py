"""Streaming data: determinism, O(1) resume, rank partition, corrupt samples, mixture proportions, packing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from train.data import (
    Batched,
    ImageTextShards,
    JsonlText,
    Mixture,
    Packer,
    PackPiece,
    Strided,
    synthetic_image_text,
    write_image_text_shard,
    write_synthetic_image_text_shards,
    write_synthetic_jsonl,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    write_synthetic_image_text_shards(directory, num_shards=3, per_shard=5, image_size=16)
    return directory


def keys(stream, n: int) -> list[str]:
    return [next(stream).key for _ in range(n)]


def test_order_is_deterministic_and_each_epoch_sees_every_sample_once(shards):
    a = keys(ImageTextShards([str(shards / "*.tar")], seed=7), 30)
    b = keys(ImageTextShards([str(shards / "*.tar")], seed=7), 30)
    c = keys(ImageTextShards([str(shards / "*.tar")], seed=8), 30)
    assert a == b
    assert a != c
    assert sorted(a[:15]) == sorted(f"{i:09d}" for i in range(15))  # epoch 0: every sample once
    assert sorted(a[15:]) == sorted(a[:15])  # epoch 1: every sample again


def test_decoded_sample_has_image_and_caption(shards):
    sample = next(ImageTextShards([str(shards / "*.tar")], seed=0))
    assert sample.image.size == (16, 16) and sample.image.mode == "RGB"
    _, caption = synthetic_image_text(int(sample.key), 16)
    assert sample.text == caption and sample.meta["key"] == sample.key


@settings(max_examples=8, deadline=None, derandomize=True)
@given(cut=st.integers(min_value=0, max_value=25))
def test_resume_from_state_continues_exactly(shards, cut):
    reference = keys(ImageTextShards([str(shards / "*.tar")], seed=3), cut + 6)
    first = ImageTextShards([str(shards / "*.tar")], seed=3)
    keys(first, cut)
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives any serialisation
    resumed = ImageTextShards([str(shards / "*.tar")], seed=3)
    resumed.load_state_dict(state)
    assert keys(resumed, 6) == reference[cut:]


def test_sample_partition_splits_the_global_order_between_ranks(shards):
    pattern = [str(shards / "*.tar")]
    single = keys(ImageTextShards(pattern, seed=1), 14)
    rank0 = keys(ImageTextShards(pattern, seed=1, rank=0, world_size=2), 7)
    rank1 = keys(ImageTextShards(pattern, seed=1, rank=1, world_size=2), 7)
    assert rank0 == single[0::2] and rank1 == single[1::2]


def test_shard_partition_needs_a_shard_per_rank(shards):
    with pytest.raises(ValueError, match="3 files for 4 ranks"):
        ImageTextShards([str(shards / "*.tar")], rank=0, world_size=4, partition="shard")


def test_corrupt_samples_are_skipped_counted_and_not_fatal(tmp_path):
    good, caption = synthetic_image_text(0, 16)
    write_image_text_shard(
        tmp_path / "a.tar",
        [
            ("000", good, caption, None),
            ("001", b"not a jpeg at all", "broken image", None),
            ("002", good[: len(good) // 2], "truncated jpeg", None),
            ("003", good, None, None),  # no caption
            ("004", good, "fine again", None),
        ],
    )
    # A shard cut in the middle of a member, and a file that is not a tar at all.
    whole = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(whole[: len(whole) // 2 + 100])
    (tmp_path / "c.tar").write_bytes(b"garbage" * 100)
    stream = ImageTextShards([str(tmp_path / "*.tar")], seed=0)
    seen = keys(stream, 6)
    assert set(seen) == {"000", "004"}
    stats = stream.stats()
    assert stats["skipped_undecodable_image"] >= 2 and stats["skipped_no_text"] >= 1
    assert stats.get("skipped_truncated_shard", 0) + stats.get("skipped_unreadable_shard", 0) >= 1


def test_a_data_set_without_any_readable_sample_is_an_error(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="no readable sample"):
        next(ImageTextShards([str(tmp_path / "x.tar")]))


def test_missing_files_name_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        ImageTextShards([str(tmp_path / "nothing-here-*.tar")])


def test_jsonl_skips_bad_lines_and_resumes_by_offset(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "one"}\nnot json\n{"other": 1}\n{"text": "two"}\n\n{"text": "three"}\n')
    stream = JsonlText([str(path)])
    assert [next(stream) for _ in range(3)] == ["one", "two", "three"]
    assert stream.stats() == {"skipped_bad_json_line": 2}
    first = JsonlText([str(path)])
    next(first)
    resumed = JsonlText([str(path)])
    resumed.load_state_dict(first.state_dict())
    assert next(resumed) == "two"


class Counter:
    """A stateful stream of integers (for combinator tests)."""

    def __init__(self, tag: str = ""):
        self.i, self.tag = 0, tag

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return f"{self.tag}{self.i - 1}"

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]

    def stats(self):
        return {}


def test_mixture_follows_the_proportions_text_2_to_1_and_table5():
    from train.lavit.config import REDPAJAMA_PROPORTIONS

    text = Mixture({n: Counter(n) for n in REDPAJAMA_PROPORTIONS}, REDPAJAMA_PROPORTIONS, seed=0)
    top = Mixture({"text": text, "image_text": Counter("img")}, {"text": 2.0, "image_text": 1.0}, seed=0)
    n = 6000
    for _ in range(n):
        next(top)
    assert abs(top.counts["text"] / n - 2 / 3) < 0.02
    drawn = text.counts
    assert abs(drawn["c4"] / sum(drawn.values()) - 0.80) < 0.02
    assert abs(drawn["github"] / sum(drawn.values()) - 0.04) < 0.01


def test_mixture_resume_is_exact():
    def make():
        return Mixture({"a": Counter("a"), "b": Counter("b")}, {"a": 1.0, "b": 3.0}, seed=5)

    reference = [next(m) for m in [make()] for _ in range(40)]
    first = make()
    for _ in range(17):
        next(first)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed) for _ in range(23)] == reference[17:]


def _pieces(lengths_and_split):
    class Docs(Counter):
        def __next__(self):
            length, split = lengths_and_split[self.i % len(lengths_and_split)]
            self.i += 1
            return (self.i - 1, length, split)

    return Docs()


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    docs=st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12),
    seq_len=st.integers(8, 24),
    cut=st.integers(0, 6),
)
def test_packing_fills_sequences_keeps_unsplittable_docs_whole_and_resumes(docs, seq_len, cut):
    assume(any(split or length <= seq_len for length, split in docs))
    to_piece = lambda d: PackPiece(length=d[1], splittable=d[2], payload=d)  # noqa: E731
    packer = Packer(_pieces(docs), seq_len, to_piece)
    rows = [next(packer) for _ in range(cut + 4)]
    for row in rows:
        assert row.length == sum(e - s for _, s, e in row.segments) <= seq_len
        for payload, s, e in row.segments:
            if not payload[2]:
                assert (s, e) == (0, payload[1])  # an unsplittable document is never cut
        if row.length < seq_len:  # padding only when the next unsplittable document does not fit
            assert row.segments
    # Every document's pieces, concatenated in order, cover it exactly once (except skipped over-long ones).
    covered: dict[int, list[tuple[int, int]]] = {}
    for row in rows:
        for payload, s, e in row.segments:
            covered.setdefault(payload[0], []).append((s, e))
    for index, spans in covered.items():
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # Resume after `cut` rows gives the same following rows.
    first = Packer(_pieces(docs), seq_len, to_piece)
    for _ in range(cut):
        next(first)
    resumed = Packer(_pieces(docs), seq_len, to_piece)
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed).segments for _ in range(4)] == [r.segments for r in rows[cut:]]


def test_strided_and_batched_split_one_stream_between_ranks():
    single = Batched(Counter(), 2, list)
    ranks = [Batched(Strided(Counter(), r, 2), 1, list) for r in range(2)]
    for _ in range(3):
        pair = next(single)
        assert pair == [next(ranks[0])[0], next(ranks[1])[0]]


def test_writers_produce_img2dataset_layout(tmp_path):
    paths = write_synthetic_image_text_shards(tmp_path, num_shards=1, per_shard=2, image_size=8)
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert names == ["000000000.jpg", "000000000.txt", "000000000.json", "000000001.jpg", "000000001.txt", "000000001.json"]
    text = write_synthetic_jsonl(tmp_path / "t.jsonl", num_docs=3)
    assert [json.loads(l)["id"] for l in text.read_text().splitlines()] == [0, 1, 2]
