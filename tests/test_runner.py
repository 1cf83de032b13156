"""The evaluation runner: interface checks, JSONL cache, resume after a kill, sharding and merge, bad input.

The model here is a fake adapter (the runner is what is under test): its outputs are a pure function of the
image pixels / prompt, and it counts how many inputs it was asked about, so a test can tell cached samples
from recomputed ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from eval.cache import CacheError, CacheWriter, read_cache, saved_predictions
from eval.errors import EvalInputError
from eval.interface import EvalSample, EvalTask, EvaluationError, UnsupportedTaskError, require_method
from eval.runner import (
    DatasetError,
    IncompleteEvaluationError,
    dataset_hash,
    evaluate,
    merge,
    run_shard,
    sample_seed,
    shard_indices,
    shard_path,
)

REPO = Path(__file__).resolve().parent.parent
PROVENANCE = {"git": "test", "python": "test"}  # harness.io.provenance() imports diffusers (seconds); tested once below
N_SAMPLES = 12
CAPTION_TASK = EvalTask(
    name="fake_caption", kind="caption", metric="exact_match", variant="strip",
    prompt="A photo of", generation={"max_new_tokens": 5, "num_beams": 1}, version=1,
)


def color_of(index: int) -> tuple[int, int, int]:
    return ((index * 20) % 256, (index * 37) % 256, (index * 53) % 256)


def write_images(directory: Path, n: int = N_SAMPLES) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (4, 4), color_of(i)).save(directory / f"img_{i}.png")


def caption_samples(n: int = N_SAMPLES) -> list[EvalSample]:
    """Even ids have a reference the fake model reproduces exactly, odd ids do not: exact match is 50%."""
    return [
        EvalSample(
            id=i,
            image=f"img_{i}.png",
            references=(f"red {color_of(i)[0]}", "another caption") if i % 2 == 0 else ("a cat",),
        )
        for i in range(n)
    ]


class FakeModel:
    """Deterministic outputs; counts calls and inputs; optionally fails or SIGKILLs itself on call k."""

    model_id = "fake-model-v1"

    def __init__(self, fail_on_call: int | None = None, kill_on_call: int | None = None):
        self.fail_on_call = fail_on_call
        self.kill_on_call = kill_on_call
        self.calls = 0
        self.n_inputs = 0
        self.seen_generation: list[dict] = []

    def _tick(self, n_inputs: int, generation: dict) -> None:
        self.calls += 1
        if self.calls == self.kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.calls == self.fail_on_call:
            raise RuntimeError(f"injected failure on call {self.calls}")
        self.n_inputs += n_inputs
        self.seen_generation.append(generation)

    def caption(self, images, prompt, **generation):
        self._tick(len(images), generation)
        return [f"red {image.getpixel((0, 0))[0]}" for image in images]

    def answer(self, images, questions, **generation):
        self._tick(len(images), generation)
        return [f"{q.split()[-1]} {image.getpixel((0, 0))[1] % 3}" for image, q in zip(images, questions)]

    def generate_images(self, prompts, seeds, **generation):
        self._tick(len(prompts), generation)
        return [Image.new("RGB", (4, 4), (len(p) * 7 % 256, generation["guidance"], seed % 256)) for p, seed in zip(prompts, seeds)]

    def score_text(self, contexts, continuations, images=None):
        self._tick(len(contexts), {})
        # Prefers the continuation whose length equals the context length mod 4 (a pure, testable rule).
        return [-abs(len(c) - len(ctx) % 4) - 0.5 for ctx, c in zip(contexts, continuations)]


class CaptionOnly:
    model_id = "caption-only"

    def caption(self, images, prompt, **generation):
        return ["x"] * len(images)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    write_images(tmp_path / "images")
    return tmp_path / "images"


def run(model, out_dir, data, task=CAPTION_TASK, samples=None, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("provenance", PROVENANCE)
    kw.setdefault("progress", False)
    return evaluate(model, task, samples or caption_samples(), out_dir, image_root=data, **kw)


# ---------------------------------------------------------------------------------------------
# Interface


def test_require_method_names_the_missing_method_and_what_the_model_has():
    vqa = EvalTask(name="vqa", kind="vqa")
    with pytest.raises(UnsupportedTaskError, match=r"needs model.answer\(...\).*CaptionOnly.*implements: caption"):
        require_method(CaptionOnly(), vqa)
    assert require_method(CaptionOnly(), CAPTION_TASK) == "caption"

    class NoId:
        def caption(self, images, prompt, **generation):
            return []

    with pytest.raises(EvaluationError, match="model_id"):
        require_method(NoId(), CAPTION_TASK)


def test_task_prompt_template_is_filled_and_bad_fields_are_named():
    task = EvalTask(name="q", kind="vqa", prompt="{text}\nAnswer with one word.")
    assert task.format_text(EvalSample(id=1, image="a", text="What?")) == "What?\nAnswer with one word."
    assert EvalTask(name="q", kind="vqa").format_text(EvalSample(id=1, image="a", text="What?")) == "What?"
    assert CAPTION_TASK.format_text(EvalSample(id=1, image="a")) == "A photo of"
    with pytest.raises(EvaluationError, match=r"\{question\}"):
        EvalTask(name="q", kind="vqa", prompt="{question}").format_text(EvalSample(id=1, text="x"))


# ---------------------------------------------------------------------------------------------
# Single process: rows, files, denominators


def test_caption_run_returns_rows_with_denominators_and_identity(tmp_path, data):
    model = FakeModel()
    rows = run(model, tmp_path / "out", data)
    assert list(rows["metric"]) == ["exact_match"]
    row = rows.iloc[0]
    assert row["value"] == pytest.approx(50.0)
    assert (row["n_scored"], row["n_missing"], row["n_denominator"], row["n_skipped_corrupt"], row["n_total"]) == (12, 0, 12, 0, 12)
    assert row["task"] == "fake_caption" and row["variant"] == CAPTION_TASK.variant and row["task_version"] == 1
    assert row["dataset_hash"] == dataset_hash(caption_samples())
    config = json.loads(row["config"])
    assert config["task"]["prompt"] == "A photo of" and config["model_id"] == "fake-model-v1"
    assert json.loads(row["provenance"]) == PROVENANCE
    # Generation settings are passed to the model verbatim; batches of 2.
    assert model.seen_generation == [CAPTION_TASK.generation] * 6 and model.n_inputs == 12
    # Merged predictions in dataset order, and the rows on disk.
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines[1:]] == list(range(12))
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["value"] == pytest.approx(50.0)


def test_default_provenance_comes_from_harness_io(tmp_path, data, monkeypatch):
    import harness.io

    monkeypatch.setattr(harness.io, "provenance", lambda: {"git": "abc123", "torch": "x"})
    rows = run(FakeModel(), tmp_path / "out", data, provenance=None)
    assert json.loads(rows.iloc[0]["provenance"]) == {"git": "abc123", "torch": "x"}


def test_progress_bar_writes_to_stderr_when_enabled(tmp_path, data, capsys):
    run(FakeModel(), tmp_path / "out", data, progress=True)
    assert "fake_caption [rank 0/1]" in capsys.readouterr().err


def test_rerun_of_a_finished_evaluation_makes_no_model_calls(tmp_path, data):
    first = run(FakeModel(), tmp_path / "out", data)
    model = FakeModel()
    second = run(model, tmp_path / "out", data, batch_size=5)  # batch size is not part of the cache identity
    assert model.calls == 0
    assert second.equals(first)

    # The metric is applied to the cache afterwards: another metric variant rescores without model calls.
    def case_insensitive_prefix(references, predictions, variant):
        hits = sum(any(str(r).lower().startswith(predictions[i].lower()) for r in references[i]) for i in predictions)
        return {"prefix_match": 100.0 * hits / len(predictions)}

    rescoring = dataclasses.replace(CAPTION_TASK, metric="prefix_match", variant="prefix, case-insensitive")
    rescored = run(model, tmp_path / "out", data, task=rescoring, metric_fn=case_insensitive_prefix)
    assert model.calls == 0
    assert (rescored.iloc[0]["metric"], rescored.iloc[0]["variant"]) == ("prefix_match", "prefix, case-insensitive")
    assert rescored.iloc[0]["value"] == pytest.approx(50.0)


def test_tasks_are_data_loaded_from_yaml_through_harness_config(tmp_path):
    from harness.config import ConfigError, load_config

    path = tmp_path / "task.yaml"
    path.write_text(
        "name: okvqa_val\nkind: vqa\nmetric: vqa_accuracy\nvariant: VQAv2 official, 10 answers\n"
        "prompt: \"{text}\\nAnswer the question using a single word or phrase.\"\n"
        "generation: {max_new_tokens: 10, num_beams: 1}\nversion: 2\n"
    )
    task = load_config(EvalTask, path)
    assert task.kind == "vqa" and task.generation == {"max_new_tokens": 10, "num_beams": 1} and task.version == 2
    assert task.format_text(EvalSample(id=1, text="Why?")) == "Why?\nAnswer the question using a single word or phrase."
    path.write_text("name: x\nkind: retrieval\n")
    with pytest.raises(ConfigError, match="kind: expected one of"):
        load_config(EvalTask, path)


# ---------------------------------------------------------------------------------------------
# Resume after an interruption


@settings(max_examples=6, deadline=None, derandomize=True)
@given(fail_on_call=st.integers(min_value=1, max_value=6), batch_size=st.integers(min_value=1, max_value=5))
def test_resume_after_failure_recomputes_only_uncached_and_gives_identical_metric(tmp_path_factory, fail_on_call, batch_size):
    root = tmp_path_factory.mktemp("resume")
    write_images(root / "images")
    reference = run(FakeModel(), root / "uninterrupted", root / "images", batch_size=batch_size)

    crashing = FakeModel(fail_on_call=fail_on_call)
    n_batches = -(-N_SAMPLES // batch_size)
    if fail_on_call <= n_batches:
        with pytest.raises(RuntimeError, match="injected failure"):
            run(crashing, root / "out", root / "images", batch_size=batch_size)
        n_cached = (fail_on_call - 1) * batch_size
        assert len(read_cache(shard_path(root / "out", 0, 1)).records) == n_cached
    resumed = FakeModel()
    rows = run(resumed, root / "out", root / "images", batch_size=batch_size)
    assert crashing.n_inputs + resumed.n_inputs == N_SAMPLES  # nothing recomputed
    assert rows.equals(reference)


SIGKILL_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from test_runner import CAPTION_TASK, PROVENANCE, FakeModel, caption_samples
from eval.runner import evaluate
evaluate(FakeModel(kill_on_call=3), CAPTION_TASK, caption_samples(), Path(sys.argv[1]), image_root=Path(sys.argv[2]),
         batch_size=2, provenance=PROVENANCE, progress=False)
raise SystemExit("not killed")
"""


def test_resume_after_sigkill_in_a_subprocess(tmp_path, data):
    out = tmp_path / "out"
    script = SIGKILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"))
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Killed during the third call: the first two batches (4 samples) are on disk.
    assert sorted(read_cache(shard_path(out, 0, 1)).records) == [0, 1, 2, 3]

    resumed = FakeModel()
    rows = run(resumed, out, data)
    assert resumed.n_inputs == N_SAMPLES - 4 and resumed.calls == 4
    assert rows.equals(run(FakeModel(), tmp_path / "uninterrupted", data))


def test_unterminated_last_line_is_dropped_counted_and_recomputed(tmp_path, data):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run(FakeModel(fail_on_call=3), out, data)
    path = shard_path(out, 0, 1)
    with open(path, "ab") as f:
        f.write(b'{"id": 4, "predic')  # a write cut short by a kill
    assert read_cache(path).n_dropped_partial == 1

    model = FakeModel()
    stats = run_shard(model, CAPTION_TASK, caption_samples(), out, batch_size=2, image_root=data, progress=False)
    assert (stats.n_cached, stats.n_computed, stats.n_dropped_partial) == (4, 8, 1)
    assert model.n_inputs == 8
    after = read_cache(path)
    assert after.n_dropped_partial == 0 and sorted(after.records) == list(range(12))
    reference = run(FakeModel(), tmp_path / "uninterrupted", data)
    assert merge(CAPTION_TASK, caption_samples(), out, provenance=PROVENANCE).equals(reference)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n_records=st.integers(min_value=0, max_value=6), cut=st.floats(min_value=0.0, max_value=1.0))
def test_cache_keeps_exactly_the_complete_lines_of_a_truncated_file(tmp_path_factory, n_records, cut):
    path = tmp_path_factory.mktemp("cache") / "c.jsonl"
    writer, _ = CacheWriter.open(path, {"task": "t"})
    with writer:
        for i in range(n_records):
            writer.append([{"id": i, "prediction": f"caption number {i} ünïcode"}])
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    keep = header_end + int(cut * (len(data) - header_end))
    path.write_bytes(data[:keep])
    complete = data[:keep].count(b"\n") - 1
    contents = read_cache(path)
    assert sorted(contents.records) == list(range(complete))
    assert contents.n_dropped_partial == int(not data[:keep].endswith(b"\n"))


# ---------------------------------------------------------------------------------------------
# Cache identity and malformed caches


def test_resume_refuses_a_cache_made_with_other_settings(tmp_path, data):
    run(FakeModel(), tmp_path / "out", data)
    changed = dataclasses.replace(CAPTION_TASK, prompt="Describe the image.", version=2)
    with pytest.raises(CacheError, match=r"(?s)refusing to resume.*shard-0-of-1.jsonl.*task.prompt: cache has 'A photo of', "
                       r"this run has 'Describe the image.'.*task.version: cache has 1, this run has 2"):
        run(FakeModel(), tmp_path / "out", data, task=changed)

    class OtherModel(FakeModel):
        model_id = "other-model"

    with pytest.raises(CacheError, match="model_id: cache has 'fake-model-v1', this run has 'other-model'"):
        run(OtherModel(), tmp_path / "out", data)
    with pytest.raises(CacheError, match=r"model_config: cache has None, this run has {.layers.: 2}"):
        run(FakeModel(), tmp_path / "out", data, model_config={"layers": 2})


def test_malformed_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path, data):
    run(FakeModel(), tmp_path / "out", data)
    path = shard_path(tmp_path / "out", 0, 1)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = '{"id": 2, "prediction": "oops\n'
    path.write_text("".join(lines))
    with pytest.raises(CacheError, match=r"shard-0-of-1.jsonl:4: malformed JSON"):
        run(FakeModel(), tmp_path / "out", data)


def test_duplicate_id_in_a_cache_is_an_error_naming_both_lines(tmp_path, data):
    run(FakeModel(), tmp_path / "out", data)
    path = shard_path(tmp_path / "out", 0, 1)
    with open(path, "a") as f:
        f.write('{"id": 5, "prediction": "again"}\n')
    with pytest.raises(CacheError, match=r"shard-0-of-1.jsonl:14: duplicate id 5 \(first recorded on line 7\)"):
        merge(CAPTION_TASK, caption_samples(), tmp_path / "out", provenance=PROVENANCE)


def test_saved_predictions_are_the_merged_files_predictions_without_the_skipped_ones(tmp_path, data):
    """The one reader the tables use: the header is not a record, a skipped sample is left out, a file that does not
    start with a header is refused."""
    (data / "img_2.png").write_bytes(b"this is not a png")
    run(FakeModel(), tmp_path / "out", data)
    path = tmp_path / "out" / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    saved = saved_predictions(path)
    assert saved == {r["id"]: r["prediction"] for r in records if "prediction" in r}
    assert len(saved) == len(records) - 1 == 11 and 2 not in saved
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[1:]))
    with pytest.raises(CacheError, match=r"predictions.jsonl:1: expected a header line"):
        saved_predictions(path)


def test_prediction_for_unknown_id_is_an_error_naming_file_and_id(tmp_path, data):
    run(FakeModel(), tmp_path / "out", data)
    path = shard_path(tmp_path / "out", 0, 1)
    with open(path, "a") as f:
        f.write('{"id": 999, "prediction": "stray"}\n')
    with pytest.raises(CacheError, match=r"shard-0-of-1.jsonl:14: prediction for unknown id 999"):
        merge(CAPTION_TASK, caption_samples(), tmp_path / "out", provenance=PROVENANCE)
    with pytest.raises(CacheError, match=r"shard-0-of-1.jsonl:14: id 999 is not one of this shard's samples"):
        run(FakeModel(), tmp_path / "out", data)


# ---------------------------------------------------------------------------------------------
# Bad datasets


def test_duplicate_dataset_id_is_an_error_naming_the_id(tmp_path, data):
    samples = caption_samples() + [EvalSample(id=7, image="img_0.png", references=("x",))]
    with pytest.raises(DatasetError, match=r"duplicate id 7 \(samples 7 and 12\)"):
        run(FakeModel(), tmp_path / "out", data, samples=samples)
    # 3 and "3" are one id, as everywhere in eval/ (eval/datasets.py id_key).
    samples = caption_samples() + [EvalSample(id="3", image="img_0.png", references=("x",))]
    with pytest.raises(DatasetError, match=r"duplicate id '3' \(samples 3 and 12\)"):
        run(FakeModel(), tmp_path / "out", data, samples=samples)


def test_missing_image_file_is_an_error_naming_id_and_path_before_any_model_call(tmp_path, data):
    (data / "img_3.png").unlink()
    model = FakeModel()
    with pytest.raises(DatasetError, match=r"1 of 12 image files not found.*\n  3: .*img_3.png"):
        run(model, tmp_path / "out", data)
    assert model.calls == 0
    assert isinstance(DatasetError("x"), EvalInputError)  # CLIs catch bad input by this one type


def test_corrupt_images_are_skipped_counted_and_never_sent_to_the_model(tmp_path, data):
    (data / "img_2.png").write_bytes(b"this is not a png")
    png = (data / "img_5.png").read_bytes()
    (data / "img_5.png").write_bytes(png[: len(png) // 2])  # truncated
    model = FakeModel()
    rows = run(model, tmp_path / "out", data)
    row = rows.iloc[0]
    assert (row["n_scored"], row["n_skipped_corrupt"], row["n_missing"], row["n_denominator"], row["n_total"]) == (10, 2, 0, 10, 12)
    assert model.n_inputs == 10
    assert row["value"] == pytest.approx(100.0 * 5 / 10)  # ids 0,4,6,8,10 match; 2 was skipped
    records = read_cache(shard_path(tmp_path / "out", 0, 1)).records
    assert records[2]["skipped"] == "corrupt_image" and "img_2.png" in records[2]["error"]
    resumed = FakeModel()
    assert run(resumed, tmp_path / "out", data).equals(rows) and resumed.calls == 0  # skips are cached too


def test_all_images_corrupt_is_an_empty_prediction_set_error(tmp_path, data):
    for i in range(N_SAMPLES):
        (data / f"img_{i}.png").write_bytes(b"junk")
    with pytest.raises(EvalInputError, match=r"empty prediction set.*12 skipped as corrupt"):
        run(FakeModel(), tmp_path / "out", data)


def test_model_returning_the_wrong_number_of_outputs_is_an_error(tmp_path, data):
    class Short(FakeModel):
        def caption(self, images, prompt, **generation):
            return super().caption(images, prompt, **generation)[:-1]

    with pytest.raises(EvaluationError, match=r"caption\(\) returned 1 outputs for 2 inputs \(ids \[0, 1\]"):
        run(Short(), tmp_path / "out", data)


# ---------------------------------------------------------------------------------------------
# Sharding and merge


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(min_value=0, max_value=50), world=st.integers(min_value=1, max_value=8))
def test_shards_partition_the_dataset(n, world):
    shards = [list(shard_indices(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert all(i % world == r for r, s in enumerate(shards) for i in s)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.permutations(list(range(8))))
def test_dataset_hash_ignores_order_but_not_content(order):
    samples = caption_samples(8)
    assert dataset_hash([samples[i] for i in order]) == dataset_hash(samples)
    changed = list(samples)
    changed[order[0]] = EvalSample(id=order[0], image=f"img_{order[0]}.png", references=("changed",))
    assert dataset_hash(changed) != dataset_hash(samples)


def test_independent_shard_jobs_then_merge_equal_a_single_run(tmp_path, data):
    out = tmp_path / "sharded"
    for rank in range(3):
        run_shard(FakeModel(), CAPTION_TASK, caption_samples(), out, rank=rank, world_size=3, batch_size=2,
                  image_root=data, progress=False)
    merged = merge(CAPTION_TASK, caption_samples(), out, world_size=3, provenance=PROVENANCE)
    single = run(FakeModel(), tmp_path / "single", data)
    columns = [c for c in merged.columns if c != "config"]
    assert merged[columns].equals(single[columns])
    assert json.loads(merged.iloc[0]["config"])["world_size"] == 3


def test_merge_reports_missing_shards_and_missing_ids(tmp_path, data):
    out = tmp_path / "out"
    run_shard(FakeModel(), CAPTION_TASK, caption_samples(), out, rank=0, world_size=2, image_root=data, progress=False)
    with pytest.raises(CacheError, match=r"missing shard cache .*shard-1-of-2.jsonl \(rank 1 of 2\).*shard-0-of-2.jsonl"):
        merge(CAPTION_TASK, caption_samples(), out, world_size=2, provenance=PROVENANCE)
    # Rank 1 ran only its first batch (ids 1 and 3) before failing.
    with pytest.raises(RuntimeError):
        run_shard(FakeModel(fail_on_call=2), CAPTION_TASK, caption_samples(), out, rank=1, world_size=2, batch_size=2,
                  image_root=data, progress=False)
    with pytest.raises(IncompleteEvaluationError, match=r"4 of 12 ids have no prediction.*5 \(shard 1\), 7 \(shard 1\)"):
        merge(CAPTION_TASK, caption_samples(), out, world_size=2, provenance=PROVENANCE)
    rows = merge(CAPTION_TASK, caption_samples(), out, world_size=2, provenance=PROVENANCE, allow_missing=True)
    row = rows.iloc[0]
    assert (row["n_scored"], row["n_missing"], row["n_denominator"], row["n_total"]) == (8, 4, 12, 12)
    # Missing ids count as wrong, never a smaller denominator: 0,2,4,6,8,10 match; 1,3 do not; 5,7,9,11 missing.
    assert row["value"] == pytest.approx(100.0 * 6 / 12)


def test_merge_rejects_an_id_in_the_wrong_shard(tmp_path, data):
    out = tmp_path / "out"
    for rank in range(2):
        run_shard(FakeModel(), CAPTION_TASK, caption_samples(), out, rank=rank, world_size=2, image_root=data, progress=False)
    path = shard_path(out, 1, 2)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"id": 1,', '"id": 0,')
    path.write_text("".join(lines))
    with pytest.raises(CacheError, match=r"shard-1-of-2.jsonl:2: (duplicate id 0|id 0 belongs to rank 0, not rank 1)"):
        merge(CAPTION_TASK, caption_samples(), out, world_size=2, provenance=PROVENANCE)


def _distributed_worker(rank: int, world_size: int, init_file: str, data: str, out: str, result_dir: str) -> None:
    import torch.distributed as dist

    # A short collective timeout: a rank that never reaches the merge fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        report = {}
        # First attempt: rank 1 fails on its second call; every rank must raise (none may hang in the merge).
        try:
            run(FakeModel(fail_on_call=2 if rank == 1 else None), out, Path(data))
            report["first"] = "no error"
        except Exception as err:  # noqa: BLE001 - the message is what the test checks
            report["first"] = f"{type(err).__name__}: {err}"
        # Second attempt resumes from the shard caches.
        model = FakeModel()
        rows = run(model, out, Path(data))
        report["n_inputs"] = model.n_inputs
        report["rows"] = None if rows is None else rows.to_dict("records")
        Path(result_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_process_gloo_run_with_a_failed_rank_resumes_and_equals_single_process(tmp_path, data):
    import torch.multiprocessing as mp

    out, results = tmp_path / "dist", tmp_path / "reports"
    results.mkdir()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(data), str(out), str(results)), nprocs=2, join=True)
    reports = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["first"] == "EvaluationError: task 'fake_caption': ranks [1] failed (see their logs); rerunning resumes from the caches"
    assert reports[1]["first"] == "RuntimeError: injected failure on call 2"
    # Rank 0 finished all 6 of its samples in the first attempt; rank 1 had cached 2 of its 6.
    assert [r["n_inputs"] for r in reports] == [0, 4]
    assert reports[1]["rows"] is None
    single = run(FakeModel(), tmp_path / "single", data).to_dict("records")
    for got, want in zip(reports[0]["rows"], single, strict=True):
        assert json.loads(got.pop("config"))["world_size"] == 2
        want.pop("config")
        assert got == want


# ---------------------------------------------------------------------------------------------
# The other task kinds


def test_vqa_formats_questions_with_the_task_template(tmp_path, data):
    task = EvalTask(name="fake_vqa", kind="vqa", metric="exact_match", prompt="Q: {text} A:", version=3)
    samples = [EvalSample(id=f"q{i}", image=f"img_{i}.png", text=f"what {i}", references=(f"A: {color_of(i)[1] % 3}",))
               for i in range(6)]
    rows = run(FakeModel(), tmp_path / "out", data, task=task, samples=samples)
    assert rows.iloc[0]["value"] == pytest.approx(100.0)


def test_text_to_image_saves_pngs_and_scores_them_from_paths(tmp_path):
    task = EvalTask(name="fake_t2i", kind="t2i", metric="unused", prompt="{text}", generation={"seed": 7, "guidance": 42},
                    version=1)
    samples = [EvalSample(id=f"cap/{i}", text="x" * (i + 1), references=("real.png",)) for i in range(5)]
    seen = {}

    def mean_green(references, predictions, variant):
        seen.update(predictions)
        greens = [Image.open(path).getpixel((0, 0))[1] for path in predictions.values()]
        return {"mean_green": sum(greens) / len(greens)}

    model = FakeModel()
    rows = evaluate(model, task, samples, tmp_path / "out", metric_fn=mean_green, batch_size=2, provenance=PROVENANCE,
                    progress=False)
    assert rows.iloc[0]["value"] == pytest.approx(42.0)
    assert sorted(seen) == [f"cap/{i}" for i in range(5)] and all(Path(p).is_file() for p in seen.values())
    assert all(Path(p).parent == tmp_path / "out" / "images" for p in seen.values())
    # Each image's seed depends on the task seed and the id only, not on the batch it was generated in.
    blues = {i: Image.open(p).getpixel((0, 0))[2] for i, p in seen.items()}
    assert blues == {f"cap/{i}": sample_seed(task, f"cap/{i}") % 256 for i in range(5)}
    assert len(set(blues.values())) > 1
    other_batching = evaluate(FakeModel(), task, samples, tmp_path / "out3", metric_fn=mean_green, batch_size=3,
                              provenance=PROVENANCE, progress=False)
    assert other_batching.equals(rows)
    assert sample_seed(dataclasses.replace(task, generation={"seed": 8}), "cap/0") != sample_seed(task, "cap/0")
    # A generated image deleted after its cache line was written is reported, not silently dropped.
    (tmp_path / "out" / "images" / Path(seen["cap/3"]).name).unlink()
    with pytest.raises(CacheError, match=r"generated image .* for id 'cap/3' is missing"):
        merge(task, samples, tmp_path / "out", metric_fn=mean_green, provenance=PROVENANCE)


def test_multiple_choice_picks_the_highest_scoring_choice_and_caches_loglikelihoods(tmp_path):
    task = EvalTask(name="fake_mc", kind="multiple_choice", metric="exact_match", prompt="{text}\nAnswer:")
    # Context lengths mod 4 decide the fake model's pick: "abc" (len 3) for the first, "a" (len 1) for the second.
    samples = [
        EvalSample(id="m0", text="xxxxxxxxxxx", choices=("a", "ab", "abc"), references=("abc",)),  # ctx len 19 -> 3
        EvalSample(id="m1", text="xxxxxxxxxxxx", choices=("abc", "ab", "a"), references=("abc",)),  # ctx len 20 -> 0
    ]
    rows = evaluate(FakeModel(), task, samples, tmp_path / "out", provenance=PROVENANCE, progress=False)
    assert rows.iloc[0]["value"] == pytest.approx(50.0)
    with pytest.raises(EvaluationError, match="takes no generation settings; got generation={'temperature': 0}"):
        evaluate(FakeModel(), dataclasses.replace(task, generation={"temperature": 0}), samples, tmp_path / "o2")
    records = read_cache(shard_path(tmp_path / "out", 0, 1)).records
    assert records["m0"]["prediction"] == "abc" and records["m0"]["loglikelihoods"] == [-2.5, -1.5, -0.5]
    assert records["m1"]["prediction"] == "a"


def test_unknown_metric_or_variant_fails_before_any_model_call(tmp_path, data):
    model = FakeModel()
    task = dataclasses.replace(CAPTION_TASK, metric="no_such_metric")
    with pytest.raises(EvaluationError, match="unknown metric 'no_such_metric'; registered metrics: .*exact_match"):
        run(model, tmp_path / "out", data, task=task)
    task = dataclasses.replace(CAPTION_TASK, metric="vqa_accuracy", variant="lenient")
    with pytest.raises(EvaluationError, match="metric 'vqa_accuracy' has no variant 'lenient'; known variants: official, "):
        run(model, tmp_path / "out", data, task=task)
    assert model.calls == 0


def test_default_variant_is_resolved_and_recorded(tmp_path, data):
    rows = run(FakeModel(), tmp_path / "out", data, task=dataclasses.replace(CAPTION_TASK, variant=""))
    assert rows.iloc[0]["variant"] == "strip"


# ---------------------------------------------------------------------------------------------
# The registered metrics of the other eval modules, through the runner


def test_registered_vqa_variants_are_eval_vqa_variants():
    from eval.runner import METRICS
    from eval.vqa import DEFAULT_VARIANT, VARIANTS

    assert METRICS["vqa_accuracy"].variants == VARIANTS and METRICS["vqa_accuracy"].variants[0] == DEFAULT_VARIANT


def test_vqa_accuracy_through_the_runner_with_a_missing_prediction(tmp_path, data):
    """eval/vqa.py's leave-one-out accuracy; a prediction cache missing one id scores it 0, in the denominator."""
    task = EvalTask(name="fake_vqav2", kind="vqa", metric="vqa_accuracy", prompt="{text}")
    # The fake model answers "what <g % 3>" for question "what" (g = green channel of the image).
    answers = {i: f"what {color_of(i)[1] % 3}" for i in range(4)}
    samples = [
        EvalSample(id=0, image="img_0.png", text="what", references=(answers[0],) * 3 + ("no",) * 7),  # k=3 -> 0.9
        EvalSample(id=1, image="img_1.png", text="what", references=(answers[1],) * 10),  # unanimous -> 1
        EvalSample(id=2, image="img_2.png", text="what", references=("no",) * 10),  # 0
        EvalSample(id=3, image="img_3.png", text="what", references=(answers[3],) * 2 + ("no",) * 8),  # k=2 -> 0.6
    ]
    rows = run(FakeModel(), tmp_path / "out", data, task=task, samples=samples)
    row = rows.iloc[0]
    assert (row["metric"], row["variant"]) == ("vqa_accuracy", "official")
    assert row["value"] == pytest.approx(100.0 * (0.9 + 1 + 0 + 0.6) / 4)

    path = shard_path(tmp_path / "out", 0, 1)
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if '"id": 1,' not in line))
    rows = merge(task, samples, tmp_path / "out", provenance=PROVENANCE, allow_missing=True)
    row = rows.iloc[0]
    assert (row["n_scored"], row["n_missing"], row["n_denominator"]) == (3, 1, 4)
    assert row["value"] == pytest.approx(100.0 * (0.9 + 0 + 0 + 0.6) / 4)


def test_coco_caption_adapter_passes_every_denominator_id_and_keeps_pycocoevalcap_names(monkeypatch):
    # pycocoevalcap's Java tokenizer and METEOR take tens of seconds to start here; tests/test_caption.py runs
    # them. This checks only the adapter: missing ids reach score_captions as references without a caption.
    import eval.caption
    from eval.runner import METRICS

    calls = []

    class Result:
        metrics = {"BLEU-4": 0.25, "CIDEr": 1.1}
        spice = {"available": False, "reason": "no CoreNLP 3.6.0 jars", "value": None}

    monkeypatch.setattr(eval.caption, "score_captions", lambda refs, preds: calls.append((refs, preds)) or Result())
    values = METRICS["coco_caption"].fn({1: ["a cat"], "2": ["a dog"]}, {1: "cat"}, "pycocoevalcap")
    assert values == {"BLEU-4": 0.25, "CIDEr": 1.1}  # SPICE unavailable: absent, never 0
    assert calls == [({1: ["a cat"], "2": ["a dog"]}, {1: "cat"})]
