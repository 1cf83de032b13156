"""The evaluation runner: batched requests to a model, a resumable per-sample cache, sharding, merge, metric.

    rows = evaluate(model, task, samples, out_dir)      # a pandas DataFrame on rank 0, None on other ranks

does, on every rank r of a world of w (torch.distributed when initialised, else r=0, w=1):

1. validate the samples (unique ids, image files present) and hash them (`dataset_hash`);
2. `run_shard`: take samples i % w == r in dataset order, skip those already in `out_dir/shard-r-of-w.jsonl`,
   call the model batch by batch and append one line per sample to that cache as each batch finishes
   (corrupt images are recorded as skipped, not sent to the model);
3. wait for all ranks; rank 0 runs `merge`: read every shard, check each dataset id is there exactly once
   (unknown ids, ids in the wrong shard and cache/settings mismatches are errors naming the file and the id),
   compute the metric from the caches only, write `predictions.jsonl` and `results.json`, return the rows.

Because the metric is always computed from what the caches hold, a run killed at any point and resumed gives
exactly the number an uninterrupted run gives, and only the samples that were not cached are recomputed.
Shards can also run as independent jobs (`run_shard(..., rank=r, world_size=w)` each, then one `merge`).

Denominators are explicit: each result row carries n_scored (samples with a prediction), n_missing (samples
without one: an error unless `allow_missing=True`, then scored as wrong and kept in the denominator),
n_denominator (their sum) and n_skipped_corrupt (images that could not be decoded, left out and counted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from eval.cache import CACHE_FORMAT, CacheError, CacheWriter, identity_differences, normalize, read_cache
from eval.errors import EvalInputError
from eval.interface import (
    KIND_NEEDS_IMAGE,
    EvalSample,
    EvalTask,
    EvaluationError,
    SampleId,
    cut_continuation,
    interleaved_sequence,
    require_method,
)

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

log = logging.getLogger(__name__)


class DatasetError(EvalInputError):
    """Samples that cannot be evaluated as given (duplicate ids, missing image files, ...)."""


class IncompleteEvaluationError(EvalInputError):
    """Some dataset ids have no prediction in any shard cache."""


# ---------------------------------------------------------------------------------------------
# Metric registry: name -> pure function (references, predictions, variant) -> {metric name: value}.
#
# `references` maps every id in the denominator to its sample's references (as a list); `predictions` maps
# the ids that have a prediction to it (a string; for t2i the absolute path of the generated PNG). An id in
# `references` but not in `predictions` is a missing prediction: the metric scores it as wrong (0, or the
# empty caption), it stays in the denominator, and the runner reports the count next to the value. Samples
# whose image could not be decoded are in neither dict; the runner reports their count too.
#
# Each registered metric lists the variants it knows, the first being the default; a task's `variant`
# ("" = the default) is checked against them before any model call, and the resolved name goes in the row.

MetricFn = Callable[[dict[SampleId, list[Any]], dict[SampleId, Any], str], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    fn: MetricFn  # (references, predictions, variant) -> {name: value}
    variants: tuple[str, ...]  # the variant names fn understands; variants[0] is the default

    def resolve_variant(self, metric: str, variant: str) -> str:
        if not variant:
            return self.variants[0]
        if variant not in self.variants:
            raise EvaluationError(f"metric {metric!r} has no variant {variant!r}; known variants: {', '.join(self.variants)}")
        return variant


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, variants: tuple[str, ...]) -> Callable[[MetricFn], MetricFn]:
    """Register `fn(references, predictions, variant)` as metric `name`; duplicates are rejected."""

    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        if not variants:
            raise ValueError(f"metric {name!r}: give at least one variant name (the first is the default)")
        METRICS[name] = MetricSpec(fn, tuple(variants))
        return fn

    return wrap


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise EvaluationError(f"unknown metric {name!r}; registered metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def task_metric(spec: Any, references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any]) -> dict[str, float]:
    """Every value of a task's registered metric (`spec.metric`, scored as its `spec.variant`) on these references
    and predictions: how tables and reports score the whole or a part of an evaluation's saved predictions."""
    metric = get_metric(spec.metric)
    return metric.fn(references, predictions, metric.resolve_variant(spec.metric, spec.variant))


def _resolve_metric(task: EvalTask, metric_fn: MetricFn | None) -> tuple[MetricFn, str]:
    """The function and the variant name to score `task` with; a passed-in function gets the variant as written."""
    if metric_fn is not None:
        return metric_fn, task.variant
    spec = get_metric(task.metric)
    return spec.fn, spec.resolve_variant(task.metric, task.variant)


@register_metric("exact_match", variants=("strip",))
def exact_match(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """Percentage of ids whose prediction equals one of their references after stripping whitespace (missing = 0)."""
    hits = sum(i in predictions and str(predictions[i]).strip() in {str(r).strip() for r in refs} for i, refs in references.items())
    return {"exact_match": 100.0 * hits / len(references)}


def _vqa_dataset(references: dict[SampleId, list[Any]], metric: str):
    from eval.datasets import VQADataset, VQAQuestion

    # The runner's samples carry no answer/question types, so the per-type breakdowns are not computed here.
    questions = [VQAQuestion(str(i), tuple(str(a) for a in answers), "all", None) for i, answers in references.items()]
    return VQADataset("runner", metric, questions, [])


@register_metric("vqa_accuracy", variants=("official", "official_legacy", "normalize_both"))
def vqa_accuracy(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """VQA accuracy in percent (eval/vqa.py); references are each question's human answers (10 for VQAv2)."""
    from eval.vqa import score_vqa

    result = score_vqa(_vqa_dataset(references, "vqa_accuracy"), {str(i): p for i, p in predictions.items()}, variant)
    return {"vqa_accuracy": result.accuracy}


@register_metric("gqa_accuracy", variants=("exact_match",))
def gqa_accuracy(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """GQA accuracy in percent: exact match after VQA answer normalisation against the single answer (eval/vqa.py)."""
    from eval.vqa import score_vqa

    result = score_vqa(_vqa_dataset(references, "exact_match"), {str(i): p for i, p in predictions.items()})
    return {"gqa_accuracy": result.accuracy}


@register_metric("coco_caption", variants=("pycocoevalcap",))
def coco_caption(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars exist) on pycocoevalcap's scale (eval/caption.py)."""
    from eval.caption import score_captions

    result = score_captions({i: [str(r) for r in refs] for i, refs in references.items()}, predictions)
    values = dict(result.metrics)
    if result.spice["available"]:
        values["SPICE"] = result.spice["value"]
    return values


# ---------------------------------------------------------------------------------------------
# Samples: validation, identity, sharding, images.


def resolve_image_path(sample: EvalSample, image_root: str | Path | None) -> Path:
    assert sample.image is not None
    return Path(image_root) / sample.image if image_root is not None else Path(sample.image)


def validate_samples(
    samples: Sequence[EvalSample], task: EvalTask, image_root: str | Path | None = None, check_files: bool = True
) -> list[EvalSample]:
    """Check the dataset before any model call; every error names the offending id (and path)."""
    samples = list(samples)
    if not samples:
        raise DatasetError(f"task {task.name!r}: the dataset has no samples")
    first_index: dict[str, int] = {}  # keyed by str(id): 42 and "42" are the same id, as in eval/datasets.py
    missing_files: list[str] = []
    for index, sample in enumerate(samples):
        if not isinstance(sample, EvalSample):
            raise DatasetError(f"task {task.name!r}: sample {index} is a {type(sample).__name__}, expected EvalSample")
        if not isinstance(sample.id, (str, int)) or isinstance(sample.id, bool):
            raise DatasetError(f"task {task.name!r}: sample {index} has id {sample.id!r}; ids must be str or int")
        if str(sample.id) in first_index:
            raise DatasetError(
                f"task {task.name!r}: duplicate id {sample.id!r} (samples {first_index[str(sample.id)]} and {index})"
            )
        first_index[str(sample.id)] = index
        if KIND_NEEDS_IMAGE[task.kind] and sample.image is None:
            raise DatasetError(f"task {task.name!r} (kind {task.kind}): sample {sample.id!r} has no image path")
        if task.kind == "multiple_choice" and len(sample.choices) < 2:
            raise DatasetError(f"task {task.name!r}: sample {sample.id!r} has {len(sample.choices)} choices, needs >= 2")
        if sample.shots and task.kind != "interleaved":
            raise DatasetError(f"task {task.name!r} (kind {task.kind}): sample {sample.id!r} has in-context shots")
        if check_files and sample.image is not None and task.kind != "t2i":
            for image in [sample.image, *(shot[0] for shot in sample.shots)]:
                path = resolve_image_path(dataclasses.replace(sample, image=image), image_root)
                if not path.is_file():
                    missing_files.append(f"{sample.id!r}: {path}")
    if missing_files:
        shown = "\n  ".join(missing_files[:10])
        raise DatasetError(
            f"task {task.name!r}: {len(missing_files)} of {len(samples)} image files not found "
            f"(image_root={str(image_root) if image_root is not None else None!r}):\n  {shown}"
            + ("\n  ..." if len(missing_files) > 10 else "")
        )
    return samples


def dataset_hash(samples: Iterable[EvalSample]) -> str:
    """sha256 over the samples sorted by id: (id, image path, text, choices, references).

    Image paths are hashed as given (relative to `image_root` when the loader gives relative paths, which keeps
    the hash the same on every machine); the image bytes are not read.
    """
    # In-context shots (interleaved tasks) are hashed only when present: the hashes of other tasks stay as they were.
    rows = sorted(
        ([s.id, s.image, s.text, s.choices, s.references] + ([s.shots] if s.shots else []) for s in samples),
        key=lambda r: (str(r[0]), type(r[0]).__name__),
    )
    blob = json.dumps(rows, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def shard_indices(n_samples: int, rank: int, world_size: int) -> range:
    """The dataset positions rank `rank` evaluates: i % world_size == rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise EvaluationError(f"invalid shard: rank {rank} of world size {world_size}")
    return range(rank, n_samples, world_size)


def shard_path(out_dir: str | Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f"shard-{rank}-of-{world_size}.jsonl"


def load_image(path: Path) -> tuple["Image.Image | None", str | None]:
    """(RGB image, None), or (None, reason) when the file exists but cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not inside the model
            return image.convert("RGB"), None
    except FileNotFoundError:
        raise DatasetError(f"image file disappeared during the evaluation: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, f"{type(err).__name__}: {err}"


def sample_seed(task: EvalTask, sample_id: SampleId) -> int:
    """The seed of one generated sample: a function of the task's seed and the id only (not of batching)."""
    text = json.dumps([task.generation.get("seed", 0), str(sample_id)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")  # < 2**32, fits every RNG


def generated_image_name(sample_id: SampleId) -> str:
    """A file name for a generated image: readable, and unique even when ids differ only in stripped characters."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id))[:80]
    digest = hashlib.sha256(json.dumps(sample_id).encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}.png"


# ---------------------------------------------------------------------------------------------
# One batch of requests.


def _check_outputs(outputs: Any, batch: list[EvalSample], model: Any, method: str, expected: type) -> list[Any]:
    ids = [s.id for s in batch]
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
        got = f"{len(outputs)} outputs" if isinstance(outputs, (list, tuple)) else f"a {type(outputs).__name__}"
        raise EvaluationError(f"{model.model_id}: {method}() returned {got} for {len(batch)} inputs (ids {ids[:5]}...)")
    for sample, output in zip(batch, outputs):
        if not isinstance(output, expected):
            raise EvaluationError(
                f"{model.model_id}: {method}() returned a {type(output).__name__} for id {sample.id!r}, "
                f"expected {expected.__name__}"
            )
    return list(outputs)


def predict_batch(
    model: Any, task: EvalTask, batch: list[EvalSample], out_dir: Path, image_root: str | Path | None = None
) -> list[dict[str, Any]]:
    """Cache records for `batch`, in batch order: one model call for the samples whose images decode."""
    from PIL import Image

    records: dict[SampleId, dict[str, Any]] = {}
    live: list[EvalSample] = []
    images: list[Image.Image | None] = []
    shot_images: list[list[Image.Image]] = []  # interleaved tasks: each live sample's demonstration images
    for sample in batch:
        if sample.image is None or task.kind == "t2i":
            live.append(sample)
            images.append(None)
            continue
        loaded = []
        for relative in [sample.image, *(shot[0] for shot in sample.shots)]:
            path = resolve_image_path(dataclasses.replace(sample, image=relative), image_root)
            image, reason = load_image(path)
            if image is None:
                log.warning("task %s: skipping id %r, corrupt image %s (%s)", task.name, sample.id, path, reason)
                records[sample.id] = {"id": sample.id, "skipped": "corrupt_image", "error": f"{path}: {reason}"}
                break
            loaded.append(image)
        else:
            live.append(sample)
            images.append(loaded[0])
            shot_images.append(loaded[1:])

    if live:
        if task.kind == "caption":
            outputs = model.caption(images, prompt=task.prompt, **task.generation)
            for sample, text in zip(live, _check_outputs(outputs, live, model, "caption", str)):
                records[sample.id] = {"id": sample.id, "prediction": text}
        elif task.kind == "vqa":
            questions = [task.format_text(s) for s in live]
            outputs = model.answer(images, questions, **task.generation)
            for sample, text in zip(live, _check_outputs(outputs, live, model, "answer", str)):
                records[sample.id] = {"id": sample.id, "prediction": text}
        elif task.kind == "t2i":
            prompts, seeds = [task.format_text(s) for s in live], [sample_seed(task, s.id) for s in live]
            outputs = model.generate_images(prompts, seeds, **task.generation)
            for sample, image in zip(live, _check_outputs(outputs, live, model, "generate_images", Image.Image)):
                records[sample.id] = {"id": sample.id, "prediction": _save_generated(image, sample.id, out_dir)}
        elif task.kind == "multiple_choice":
            for sample, record in zip(live, _score_choices(model, task, live, images)):
                records[sample.id] = record
        elif task.kind == "interleaved":
            sequences = [interleaved_sequence(task, s, im, shots) for s, im, shots in zip(live, images, shot_images)]
            outputs = model.generate_interleaved(sequences, **task.generation)
            for sample, text in zip(live, _check_outputs(outputs, live, model, "generate_interleaved", str)):
                # the raw continuation is kept next to the prediction cut from it (cut_continuation)
                records[sample.id] = {"id": sample.id, "prediction": cut_continuation(task, text), "continuation": text}
        else:  # require_method already rejected unknown kinds
            raise EvaluationError(f"unknown task kind {task.kind!r}")
    return [records[s.id] for s in batch]


def _save_generated(image: "Image.Image", sample_id: SampleId, out_dir: Path) -> str:
    from harness.io import atomic_write_bytes

    relative = f"images/{generated_image_name(sample_id)}"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out_dir / relative, buffer.getvalue())  # the file exists before its cache line does
    return relative


def _score_choices(
    model: Any, task: EvalTask, live: list[EvalSample], images: list["Image.Image | None"]
) -> list[dict[str, Any]]:
    """Score every (context, choice) pair of the batch in one score_text call; the prediction is the argmax."""
    contexts, continuations, pair_images = [], [], []
    for sample, image in zip(live, images):
        context = task.format_text(sample)
        for choice in sample.choices:
            contexts.append(context)
            continuations.append(choice)
            pair_images.append(image)
    has_images = any(image is not None for image in pair_images)
    scores = model.score_text(contexts, continuations, images=pair_images if has_images else None)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(contexts):
        n = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
        raise EvaluationError(f"{model.model_id}: score_text() returned {n} scores for {len(contexts)} (context, choice) pairs")
    records, start = [], 0
    for sample in live:
        logliks = [float(x) for x in scores[start : start + len(sample.choices)]]
        start += len(sample.choices)
        if not all(math.isfinite(x) for x in logliks):
            raise EvaluationError(f"{model.model_id}: score_text() gave non-finite scores {logliks} for id {sample.id!r}")
        best = max(range(len(logliks)), key=lambda k: (logliks[k], -k))  # ties go to the first choice
        records.append({"id": sample.id, "prediction": sample.choices[best], "loglikelihoods": logliks})
    return records


# ---------------------------------------------------------------------------------------------
# One shard: resume from the cache, predict the rest.


@dataclasses.dataclass
class ShardStats:
    path: Path  # the shard's cache file
    rank: int
    world_size: int
    n_shard: int  # samples assigned to this rank
    n_cached: int  # already in the cache when this run started (not recomputed)
    n_computed: int  # records written by this run (predictions and corrupt-image skips)
    n_skipped_corrupt: int  # corrupt images in the shard's cache at the end (from any run)
    n_dropped_partial: int  # unterminated last lines dropped on resume (a write cut short by a kill)


def _model_config_dict(model_config: Any) -> Any:
    if model_config is None:
        return None
    if dataclasses.is_dataclass(model_config) and not isinstance(model_config, type):
        from harness.config import to_dict

        return to_dict(model_config)
    return normalize(model_config)


def text_settings(model: Any, task: EvalTask) -> dict[str, Any] | None:
    """What a caption / vqa model says it runs for the task's settings, through its optional
    `text_settings(kind, **generation) -> dict` (e.g. the decoding mode, and whether answers are lemmatised, which
    can depend on what is installed); None for other kinds and for models without the method."""
    describe = getattr(model, "text_settings", None)
    if task.kind not in ("caption", "vqa") or not callable(describe):
        return None
    return normalize(describe(task.kind, **task.generation))


def run_identity(
    task: EvalTask,
    model_id: str,
    model_config: Any,
    dataset_sha256: str,
    rank: int,
    world_size: int,
    text_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a shard cache's header records; a resume must match it exactly (the model's `text_settings` too, when
    it reports them: predictions made another way, e.g. before spaCy was installed, are not mixed in)."""
    identity = {
        "task": task.identity(),
        "model_id": model_id,
        "model_config": _model_config_dict(model_config),
        "dataset_sha256": dataset_sha256,
        "rank": rank,
        "world_size": world_size,
    }
    if text_settings is not None:
        identity["text_settings"] = text_settings
    return normalize(identity)


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def run_shard(
    model: Any,
    task: EvalTask,
    samples: Sequence[EvalSample],
    out_dir: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 8,
    image_root: str | Path | None = None,
    model_config: Any = None,
    progress: bool | None = None,
    fsync_every: int = 10,
) -> ShardStats:
    """Predict this rank's samples that are not cached yet, appending each finished batch to the shard cache."""
    from tqdm import tqdm

    require_method(model, task)
    if task.kind == "multiple_choice" and task.generation:
        raise EvaluationError(
            f"task {task.name!r}: multiple_choice tasks score choices with score_text(), which takes no generation "
            f"settings; got generation={task.generation!r}"
        )
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    samples = validate_samples(samples, task, image_root)
    out_dir = Path(out_dir)
    shard = [samples[i] for i in shard_indices(len(samples), rank, world_size)]
    identity = run_identity(
        task, model.model_id, model_config, dataset_hash(samples), rank, world_size, text_settings(model, task)
    )
    path = shard_path(out_dir, rank, world_size)

    writer, cached = CacheWriter.open(path, identity, fsync_every=fsync_every)
    with writer:
        shard_ids = {s.id for s in shard}
        for sample_id in cached.records:
            if sample_id not in shard_ids:
                raise CacheError(
                    f"{path}:{cached.line_of[sample_id]}: id {sample_id!r} is not one of this shard's samples "
                    f"(rank {rank} of {world_size})"
                )
        todo = [s for s in shard if s.id not in cached.records]
        if cached.records:
            log.info("%s: resuming, %d of %d samples cached, %d to go", path, len(cached.records), len(shard), len(todo))
        n_skipped = sum("skipped" in r for r in cached.records.values())
        bar = tqdm(
            total=len(shard),
            initial=len(shard) - len(todo),
            desc=f"{task.name} [rank {rank}/{world_size}]",
            unit="sample",
            position=rank,
            disable=not _progress_enabled(progress),
        )
        with bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                records = predict_batch(model, task, batch, out_dir, image_root)
                writer.append(records)
                n_skipped += sum("skipped" in r for r in records)
                bar.update(len(batch))
    return ShardStats(
        path=path,
        rank=rank,
        world_size=world_size,
        n_shard=len(shard),
        n_cached=len(cached.records),
        n_computed=len(todo),
        n_skipped_corrupt=n_skipped,
        n_dropped_partial=cached.n_dropped_partial,
    )


# ---------------------------------------------------------------------------------------------
# Merge: every dataset id exactly once across the shards, then the metric.


def merge(
    task: EvalTask,
    samples: Sequence[EvalSample],
    out_dir: str | Path,
    *,
    world_size: int = 1,
    metric_fn: MetricFn | None = None,
    model_id: str | None = None,
    allow_missing: bool = False,
    provenance: dict[str, Any] | None = None,
) -> "pd.DataFrame":
    """Combine `shard-*-of-{world_size}.jsonl` in `out_dir`, check completeness, compute the metric.

    Writes `predictions.jsonl` (all records in dataset order) and `results.json` (the rows) into `out_dir`.
    Missing predictions are an error unless `allow_missing`; then the metric scores them as wrong and they
    are counted in `n_missing`.
    """
    from harness.io import atomic_write_json, atomic_write_text

    metric_fn, variant = _resolve_metric(task, metric_fn)
    samples = validate_samples(samples, task, check_files=False)
    out_dir = Path(out_dir)
    dataset_sha256 = dataset_hash(samples)
    position = {s.id: i for i, s in enumerate(samples)}

    records: dict[SampleId, dict[str, Any]] = {}
    where: dict[SampleId, str] = {}
    header_model: tuple[str, Any, Any] | None = None  # model id, model config, text settings
    for rank in range(world_size):
        path = shard_path(out_dir, rank, world_size)
        if not path.is_file():
            present = sorted(p.name for p in out_dir.glob("shard-*.jsonl")) if out_dir.is_dir() else []
            raise CacheError(
                f"missing shard cache {path} (rank {rank} of {world_size}); shard files present: {present or 'none'}"
            )
        contents = read_cache(path)
        if contents.identity is None:
            raise CacheError(f"{path}: no header line (the run was killed before writing anything); rerun this shard")
        stored_model = tuple(contents.identity.get(k) for k in ("model_id", "model_config", "text_settings"))
        if model_id is not None and stored_model[0] != model_id:
            raise CacheError(f"{path}: predictions of model {stored_model[0]!r}, expected model {model_id!r}")
        header_model = header_model or stored_model
        expected = run_identity(task, *header_model[:2], dataset_sha256, rank, world_size, header_model[2])
        differences = identity_differences(contents.identity, expected)
        if differences:
            raise CacheError(f"{path} does not belong to this evaluation:\n  " + "\n  ".join(differences))
        for sample_id, record in contents.records.items():
            line = f"{path}:{contents.line_of[sample_id]}"
            if sample_id not in position:
                raise CacheError(f"{line}: prediction for unknown id {sample_id!r} (not in the dataset)")
            if sample_id in records:
                raise CacheError(f"{line}: duplicate id {sample_id!r}, also in {where[sample_id]}")
            if position[sample_id] % world_size != rank:
                raise CacheError(
                    f"{line}: id {sample_id!r} belongs to rank {position[sample_id] % world_size}, not rank {rank}"
                )
            records[sample_id] = record
            where[sample_id] = line

    missing = [s.id for s in samples if s.id not in records]
    if missing and not allow_missing:
        shown = ", ".join(f"{i!r} (shard {position[i] % world_size})" for i in missing[:10])
        raise IncompleteEvaluationError(
            f"task {task.name!r}: {len(missing)} of {len(samples)} ids have no prediction in {out_dir}: {shown}"
            + (", ..." if len(missing) > 10 else "")
            + "; rerun the evaluation to fill them in, or pass allow_missing=True to score them as wrong"
        )
    if missing:
        log.warning("task %s: %d of %d ids have no prediction; reported as n_missing", task.name, len(missing), len(samples))

    # The denominator: every sample except those whose image could not be decoded. Missing ids are in it
    # (in `references`, not in `predictions`): the metric scores them as wrong.
    ordered = [records[s.id] for s in samples if s.id in records]
    skipped = {r["id"] for r in ordered if "skipped" in r}
    references = {s.id: list(s.references) for s in samples if s.id not in skipped}
    predictions: dict[SampleId, Any] = {}
    for record in ordered:
        if "prediction" not in record:
            continue
        prediction = record["prediction"]
        if task.kind == "t2i":
            image_path = out_dir / prediction
            if not image_path.is_file():
                raise CacheError(f"{where[record['id']]}: generated image {image_path} for id {record['id']!r} is missing")
            prediction = str(image_path)
        predictions[record["id"]] = prediction
    if not predictions:
        raise EvalInputError(
            f"task {task.name!r}: empty prediction set in {out_dir} ({len(samples)} samples, {len(missing)} missing, "
            f"{len(skipped)} skipped as corrupt images); nothing to score"
        )

    values = metric_fn(references, predictions, variant)
    if not isinstance(values, dict) or not values:
        raise EvaluationError(f"metric {task.metric!r} returned {values!r}, expected a non-empty dict of name -> number")
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise EvaluationError(f"metric {task.metric!r} returned {name}={value!r}, expected a finite number")

    merged_header = {"header": {"format": CACHE_FORMAT, "identity": {**expected, "rank": None}}}
    atomic_write_text(
        out_dir / "predictions.jsonl",
        "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in [merged_header, *ordered]),
    )
    config = {
        "task": dataclasses.asdict(task),
        "model_id": header_model[0],
        "model_config": header_model[1],
        "world_size": world_size,
    }
    if header_model[2] is not None:
        config["text_settings"] = header_model[2]  # what the model ran (its caches recorded it)
    rows = results_rows(
        task,
        values,
        variant=variant,
        n_scored=len(predictions),
        n_missing=len(missing),
        n_skipped_corrupt=len(skipped),
        dataset_sha256=dataset_sha256,
        config=config,
        provenance=provenance,
    )
    atomic_write_json(out_dir / "results.json", rows)
    return _frame(rows)


def results_rows(
    task: EvalTask,
    values: dict[str, float],
    *,
    variant: str,
    n_scored: int,
    n_missing: int,
    n_skipped_corrupt: int,
    dataset_sha256: str,
    config: dict[str, Any],
    provenance: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per metric value, with its counts, variant, dataset hash, config and provenance.

    n_scored: samples with a prediction; n_missing: samples without one, scored as wrong; n_denominator: their
    sum, what the value is averaged over; n_skipped_corrupt: samples left out because their image could not be
    decoded; n_total: every sample of the dataset.
    """
    if provenance is None:
        from harness.io import provenance as current_provenance

        provenance = current_provenance()
    return [
        {
            "task": task.name,
            "metric": name,
            "value": float(value),
            "n_scored": n_scored,
            "n_missing": n_missing,
            "n_denominator": n_scored + n_missing,
            "n_skipped_corrupt": n_skipped_corrupt,
            "n_total": n_scored + n_missing + n_skipped_corrupt,
            "variant": variant,
            "task_version": task.version,
            "model_id": config.get("model_id"),
            "dataset_hash": dataset_sha256,
            "config": json.dumps(config, sort_keys=True),
            "provenance": json.dumps(provenance, sort_keys=True),
        }
        for name, value in values.items()
    ]


def _frame(rows: list[dict[str, Any]]) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The whole evaluation, on one process or every rank of a torch.distributed job.


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")  # not imported means not initialised: no need to import torch
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _failed_ranks(failed: bool, world_size: int) -> list[int]:
    """Every rank's failure flag, gathered (this doubles as the barrier before the merge)."""
    import torch.distributed as dist

    flags: list[Any] = [None] * world_size
    dist.all_gather_object(flags, failed)
    return [rank for rank, flag in enumerate(flags) if flag]


def evaluate(
    model: Any,
    task: EvalTask,
    samples: Sequence[EvalSample],
    out_dir: str | Path,
    *,
    metric_fn: MetricFn | None = None,
    batch_size: int = 8,
    image_root: str | Path | None = None,
    model_config: Any = None,
    progress: bool | None = None,
    allow_missing: bool = False,
    fsync_every: int = 10,
    provenance: dict[str, Any] | None = None,
) -> "pd.DataFrame | None":
    """Run (or resume) `task` on `model` and return the result rows on rank 0 (None on other ranks)."""
    _resolve_metric(task, metric_fn)  # an unknown metric or variant fails before any model call
    rank, world_size = distributed_rank_world()
    error: BaseException | None = None
    try:
        run_shard(
            model,
            task,
            samples,
            out_dir,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            image_root=image_root,
            model_config=model_config,
            progress=progress,
            fsync_every=fsync_every,
        )
    except Exception as err:  # re-raised below, after telling the other ranks (so they do not wait forever)
        error = err
    failed = _failed_ranks(error is not None, world_size) if world_size > 1 else []
    if error is not None:
        raise error
    if failed:
        raise EvaluationError(f"task {task.name!r}: ranks {failed} failed (see their logs); rerunning resumes from the caches")
    if rank != 0:
        return None
    return merge(
        task,
        samples,
        out_dir,
        world_size=world_size,
        metric_fn=metric_fn,
        model_id=model.model_id,
        allow_missing=allow_missing,
        provenance=provenance,
    )
