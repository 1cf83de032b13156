"""Baselines that never see the image, scored like the model (`reproduce/table1.py`, `reproduce/mini_chain.py`): the
samples the mini world's task reads (the first `limit`, as the model's evaluation) and the task's own metric.

The world's side (its train answer priors, `harness.miniworld.MiniWorld.prior_answer` and
`question_majority_answers`) is harness data; scoring needs the tasks and metrics, so it lives here, above them.
So do the hit rates of a model's saved outputs (`caption_hit_rate`, `generated_hit_rate`): they read an evaluation's
predictions.jsonl with the evaluation's own reader (`eval.cache.saved_predictions`).
"""

from __future__ import annotations

import random
from pathlib import Path

from eval.cache import saved_predictions
from eval.runner import task_metric
from eval.tasks import get_task
from harness.errors import InputError
from harness.miniworld import CAPTION_TEMPLATES, MiniWorld, image_hit_rates, question_majority_answers


def _task_and_samples(task_name: str, data_root: str | Path, limit: int | None):
    spec = get_task(task_name)
    return spec, spec.read(data_root, limit)[0]


ANSWER_TYPES = ("yes/no", "other")  # "other": the colour and shape questions


def _answer_type(sample) -> str:
    return "yes/no" if sample.references and sample.references[0] in ("yes", "no") else "other"


BLIND_BASELINES = ("question_type", "question")


def vqa_accuracy(world: MiniWorld, data_root: str | Path, limit: int | None = None, *, predictions_path: str | Path | None = None,
                 answer_type: str | None = None, blind: str = "question_type") -> float:
    """VQA accuracy (percent, task mini_vqa's metric) on the task's first `limit` questions, optionally only those of
    one answer type: of the model's saved predictions (`predictions_path`, the runner's predictions.jsonl), or, with
    no path, of a blind baseline: `blind="question_type"` answers each question with its type's most frequent train
    answer, `blind="question"` with the most frequent train answer of the very same question string (falling back
    to the type's for a question never asked in train)."""
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise InputError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    if blind not in BLIND_BASELINES:
        raise InputError(f"blind must be one of {BLIND_BASELINES}, got {blind!r}")
    spec, samples = _task_and_samples("mini_vqa", data_root, limit)
    samples = [s for s in samples if answer_type is None or _answer_type(s) == answer_type]
    if predictions_path is None:
        majority = question_majority_answers(world) if blind == "question" else {}
        predictions = {s.id: majority.get(s.text) or world.prior_answer(s.text) for s in samples}
    else:
        path = Path(predictions_path)
        if not path.is_file():
            raise FileNotFoundError(f"VQA predictions not found: {path}")
        saved = saved_predictions(path)
        predictions = {s.id: saved[s.id] for s in samples if s.id in saved}
    return task_metric(spec, {s.id: list(s.references) for s in samples}, predictions)[spec.headline]


def answer_prior_accuracy(world: MiniWorld, data_root: str | Path, limit: int | None = None) -> float:
    """VQA accuracy (percent, task mini_vqa's metric) of answering each question with its type's train prior."""
    return vqa_accuracy(world, data_root, limit)


def chance_caption_scores(world: MiniWorld, data_root: str | Path, limit: int | None = None, seed: int = 0) -> dict[str, float]:
    """Captions from the templates with a shape and colour drawn from the train distribution, not from the image.

    Returns {"CIDEr": pycocoevalcap's CIDEr-D (x1, not x100), "shape"/"color": share of captions naming the right one}.
    """
    spec, samples = _task_and_samples("mini_caption", data_root, limit)
    rng = random.Random(f"{seed}/chance_captions")
    shapes, colors = world.train_distribution["shape"], world.train_distribution["color"]
    predictions = {s.id: rng.choice(CAPTION_TEMPLATES).format(shape=rng.choices(list(shapes), list(shapes.values()))[0],
                                                              color=rng.choices(list(colors), list(colors.values()))[0])
                   for s in samples}
    cider = task_metric(spec, {s.id: list(s.references) for s in samples}, predictions)["CIDEr"] / 100.0
    hits = [world.caption_attribute_hits(p, i) for i, p in predictions.items()]
    return {"CIDEr": cider, "shape": sum(h[0] for h in hits) / len(hits), "color": sum(h[1] for h in hits) / len(hits)}


# ---------------------------------------------------------------------------------------------
# Hit rates of a model's saved outputs: what its captions name, what its generated images show.


def caption_hit_rate(world: MiniWorld, predictions_path: str | Path, attribute: str) -> float:
    """Share of the captions in an evaluation's predictions.jsonl that name the image's shape (or colour).

    Records skipped as corrupt images are left out, as in the runner's denominators.
    """
    if attribute not in ("shape", "color"):
        raise InputError(f"attribute must be 'shape' or 'color', got {attribute!r}")
    path = Path(predictions_path)
    if not path.is_file():
        raise FileNotFoundError(f"caption predictions not found: {path}")
    hits = [world.caption_attribute_hits(caption, i) for i, caption in saved_predictions(path).items()]
    if not hits:
        raise InputError(f"{path}: no caption predictions")
    return sum(h[("shape", "color").index(attribute)] for h in hits) / len(hits)


def generated_hit_rate(world: MiniWorld, predictions_path: str | Path, attribute: str) -> float:
    """Share of the generated images of a t2i evaluation (its predictions.jsonl: id = test image id, prediction =
    the image's path relative to the file's folder) that show the shape (or colour) of their prompt."""
    if attribute not in ("shape", "color"):
        raise InputError(f"attribute must be 'shape' or 'color', got {attribute!r}")
    path = Path(predictions_path)
    if not path.is_file():
        raise FileNotFoundError(f"generated-image predictions not found: {path}")
    images = {i: path.parent / image for i, image in saved_predictions(path).items()}
    if not images:
        raise InputError(f"{path}: no generated images")
    return image_hit_rates(world, images)[attribute]
