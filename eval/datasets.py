"""Readers for the official annotation and prediction files of the captioning and VQA benchmarks.

Every reader takes local paths in the file layout the dataset was released in, checks it, and returns a
small plain structure the metrics consume. Problems are `EvalInputError`s naming the file and the id.

Captioning (references keyed by image id):
- Karpathy splits, `dataset_coco.json` / `dataset_flickr30k.json`: ``{"images": [{"split", "filename",
  "cocoid"?, "imgid", "sentences": [{"raw", "tokens"}]}]}``. COCO images are keyed by `cocoid`, Flickr30k
  images by the number in their file name (``"1000092795.jpg"`` -> 1000092795), the ids their caption
  predictions use.
- COCO-format caption annotations: ``{"images": [{"id"}], "annotations": [{"image_id", "caption"}]}``.
- NoCaps val (`nocaps_val_4500_captions.json`): COCO format whose images carry ``"domain"``
  (in-domain / near-domain / out-domain).
- Predictions: the COCO results list ``[{"image_id", "caption"}]``.

VQA (one `VQAQuestion` per question; answers are the raw human answers):
- VQAv2 val (`v2_OpenEnded_mscoco_val2014_questions.json` + `v2_mscoco_val2014_annotations.json`) and
  OK-VQA val (`OpenEnded_mscoco_val2014_questions.json` + `mscoco_val2014_annotations.json`):
  ``{"questions": [{"question_id", "image_id", "question"}]}`` and ``{"annotations": [{"question_id",
  "question_type", "answer_type", "answers": [{"answer", "answer_confidence", "answer_id"}]}]}``.
- VizWiz val (`val.json`): ``[{"image", "question", "answers": [{"answer", "answer_confidence"}],
  "answer_type", "answerable"}]``; the question id is the image file name (VizWiz has no other).
- GQA testdev-balanced (`testdev_balanced_questions.json`): ``{qid: {"imageId", "question", "answer",
  "types": {"structural", "semantic", "detailed"}, ...}}``; scored by exact match, broken down by the
  structural type (as answer type) and the detailed type (as question type).
- Predictions: the VQA results list ``[{"question_id", "answer"}]``; also each dataset's own official
  result format (VizWiz ``{"image", "answer"}``, GQA ``{"questionId", "prediction"}``) and JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.errors import EvalInputError

NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing file or malformed JSON is an error naming the file (and the position)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} file not found", path)
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise EvalInputError(f"{what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})", path) from None
    except UnicodeDecodeError as err:
        raise EvalInputError(f"{what} is not UTF-8 text ({err})", path) from None


def id_key(value: Any, path: str | Path, what: str) -> str:
    """The canonical form of an id: its string, so 42 and "42" are the same question or image."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EvalInputError(f"{what} must be an int or a string, got {value!r}", path, value)
    return str(value)


def _field(record: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(record, dict):
        raise EvalInputError(f"{where} must be a JSON object, got {type(record).__name__}: {str(record)[:80]}", path)
    if key not in record:
        raise EvalInputError(f"{where} has no {key!r} field (fields: {sorted(record)})", path)
    return record[key]


# =============================================================================================
# Captioning


@dataclass
class CaptionReferences:
    """Reference captions of one evaluation split."""

    refs: dict[str, list[str]]  # image id (canonical string) -> its human captions
    source: str  # the file they came from
    layout: str  # "karpathy", "coco" or "nocaps"
    domains: dict[str, str] | None = None  # NoCaps only: image id -> in-/near-/out-domain
    original_ids: dict[str, Any] = field(default_factory=dict)  # canonical id -> id as written in the file


def read_karpathy_captions(path: str | Path, split: str = "test") -> CaptionReferences:
    """References of one split of a Karpathy file (`dataset_coco.json` or `dataset_flickr30k.json`)."""
    path = Path(path)
    data = read_json(path, "Karpathy split")
    images = _field(data, "images", path, "the top level")
    refs: dict[str, list[str]] = {}
    original: dict[str, Any] = {}
    splits_seen: set[str] = set()
    for i, image in enumerate(images):
        image_split = _field(image, "split", path, f"images[{i}]")
        splits_seen.add(image_split)
        if image_split != split:
            continue
        if "cocoid" in image:
            raw_id = image["cocoid"]
        else:
            stem = Path(_field(image, "filename", path, f"images[{i}]")).stem
            raw_id = int(stem) if stem.isdigit() else stem
        key = id_key(raw_id, path, f"images[{i}] id")
        if key in refs:
            raise EvalInputError(f"image id {raw_id!r} appears twice in split {split!r}", path, raw_id)
        sentences = _field(image, "sentences", path, f"images[{i}]")
        captions = [_field(s, "raw", path, f"images[{i}].sentences") for s in sentences]
        if not captions:
            raise EvalInputError(f"image {raw_id!r} has no reference sentences", path, raw_id)
        refs[key] = captions
        original[key] = raw_id
    if not refs:
        raise EvalInputError(f"no images in split {split!r} (splits present: {sorted(splits_seen)})", path)
    return CaptionReferences(refs, str(path), "karpathy", None, original)


def read_coco_captions(path: str | Path) -> CaptionReferences:
    """References from a COCO-format caption file; NoCaps files (images with a "domain") keep the domains."""
    path = Path(path)
    data = read_json(path, "caption annotations")
    images = _field(data, "images", path, "the top level")
    annotations = _field(data, "annotations", path, "the top level")
    refs: dict[str, list[str]] = {}
    original: dict[str, Any] = {}
    domains: dict[str, str] = {}
    for i, image in enumerate(images):
        raw_id = _field(image, "id", path, f"images[{i}]")
        key = id_key(raw_id, path, f"images[{i}].id")
        if key in refs:
            raise EvalInputError(f"image id {raw_id!r} appears twice in images", path, raw_id)
        refs[key] = []
        original[key] = raw_id
        if "domain" in image:
            if image["domain"] not in NOCAPS_DOMAINS:
                raise EvalInputError(f"image {raw_id!r} has domain {image['domain']!r}, expected one of {NOCAPS_DOMAINS}", path, raw_id)
            domains[key] = image["domain"]
    for i, ann in enumerate(annotations):
        raw_id = _field(ann, "image_id", path, f"annotations[{i}]")
        caption = _field(ann, "caption", path, f"annotations[{i}]")
        key = id_key(raw_id, path, f"annotations[{i}].image_id")
        if key not in refs:
            raise EvalInputError(f"annotations[{i}] refers to image id {raw_id!r}, which is not in images", path, raw_id)
        if not isinstance(caption, str):
            raise EvalInputError(f"annotations[{i}].caption must be a string, got {caption!r}", path, raw_id)
        refs[key].append(caption)
    empty = [original[k] for k, v in refs.items() if not v]
    if empty:
        raise EvalInputError(f"{len(empty)} images have no reference caption, e.g. image id {empty[0]!r}", path, empty[0])
    if not refs:
        raise EvalInputError("no images", path)
    if domains and len(domains) != len(refs):
        missing = next(original[k] for k in refs if k not in domains)
        raise EvalInputError(f"some images have a NoCaps domain and some do not, e.g. image id {missing!r}", path, missing)
    layout = "nocaps" if domains else "coco"
    return CaptionReferences(refs, str(path), layout, domains or None, original)


def read_caption_references(path: str | Path, split: str = "test") -> CaptionReferences:
    """Any of the three reference layouts, told apart by their content."""
    path = Path(path)
    data = read_json(path, "caption annotations")
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
        return read_karpathy_captions(path, split)
    return read_coco_captions(path)


def read_caption_predictions(path: str | Path) -> dict[str, str]:
    """A COCO results file ``[{"image_id", "caption"}]`` -> {image id: caption}; duplicates and empties are errors."""
    path = Path(path)
    data = read_json(path, "caption predictions")
    if not isinstance(data, list):
        raise EvalInputError(f"caption predictions must be a JSON list of {{'image_id', 'caption'}}, got {type(data).__name__}", path)
    if not data:
        raise EvalInputError("the prediction set is empty", path)
    preds: dict[str, str] = {}
    for i, record in enumerate(data):
        raw_id = _field(record, "image_id", path, f"predictions[{i}]")
        caption = _field(record, "caption", path, f"predictions[{i}]")
        key = id_key(raw_id, path, f"predictions[{i}].image_id")
        if key in preds:
            raise EvalInputError(f"image id {raw_id!r} has more than one prediction (second at index {i})", path, raw_id)
        if not isinstance(caption, str):
            raise EvalInputError(f"caption of image id {raw_id!r} must be a string, got {caption!r}", path, raw_id)
        preds[key] = caption
    return preds


# =============================================================================================
# VQA


@dataclass(frozen=True)
class VQAQuestion:
    """One question with its ground truth."""

    question_id: str  # canonical id (string form of the file's id)
    answers: tuple[str, ...]  # the raw human answers (10 for VQAv2/OK-VQA/VizWiz, 1 for GQA)
    answer_type: str  # "yes/no" / "number" / "other" / "unanswerable"; GQA: the structural type
    question_type: str | None  # VQAv2: "what color is the" ...; GQA: the detailed type; VizWiz: None


@dataclass
class VQADataset:
    """The questions of one split, in file order, with an id -> position index."""

    name: str  # "vqav2", "okvqa", "vizwiz" or "gqa" (or "vqa" when the VQA-format dataset is unnamed)
    metric: str  # "vqa_accuracy" (leave-one-out over human answers) or "exact_match" (GQA)
    questions: list[VQAQuestion]
    sources: list[str]  # the files read
    index: dict[str, int] = field(default_factory=dict)  # question id -> position in `questions`

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {q.question_id: i for i, q in enumerate(self.questions)}

    def __len__(self) -> int:
        return len(self.questions)


def _answers_of(record: dict, path: Path, where: str, qid: Any) -> tuple[str, ...]:
    answers = _field(record, "answers", path, where)
    if not isinstance(answers, list) or not answers:
        raise EvalInputError(f"question id {qid!r} has no human answers", path, qid)
    out = []
    for a in answers:
        text = _field(a, "answer", path, f"{where}.answers")
        if not isinstance(text, str):
            raise EvalInputError(f"question id {qid!r} has a non-string answer {text!r}", path, qid)
        out.append(text)
    return tuple(out)


def read_vqa_official(questions_path: str | Path, annotations_path: str | Path, name: str = "vqa") -> VQADataset:
    """VQAv2 / OK-VQA: the official questions file plus annotations file; every question must be annotated."""
    qdata = read_json(questions_path, "questions")
    adata = read_json(annotations_path, "annotations")
    return parse_vqa_official(qdata, adata, questions_path, annotations_path, name)


def parse_vqa_official(
    qdata: Any, adata: Any, questions_source: str | Path = "questions", annotations_source: str | Path = "annotations", name: str = "vqa"
) -> VQADataset:
    """`read_vqa_official` on already-parsed JSON objects (the sources only name them in errors)."""
    qpath, apath = Path(questions_source), Path(annotations_source)
    questions = _field(qdata, "questions", qpath, "the top level")
    annotations = _field(adata, "annotations", apath, "the top level")
    asked: dict[str, Any] = {}
    for i, q in enumerate(questions):
        raw = _field(q, "question_id", qpath, f"questions[{i}]")
        key = id_key(raw, qpath, f"questions[{i}].question_id")
        if key in asked:
            raise EvalInputError(f"question id {raw!r} appears twice", qpath, raw)
        asked[key] = raw
    out: list[VQAQuestion] = []
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        raw = _field(ann, "question_id", apath, where)
        key = id_key(raw, apath, f"{where}.question_id")
        if key in seen:
            raise EvalInputError(f"question id {raw!r} is annotated twice", apath, raw)
        if key not in asked:
            raise EvalInputError(f"question id {raw!r} is annotated but not in the questions file {qpath}", apath, raw)
        seen.add(key)
        out.append(
            VQAQuestion(
                question_id=key,
                answers=_answers_of(ann, apath, where, raw),
                answer_type=str(_field(ann, "answer_type", apath, where)),
                question_type=str(_field(ann, "question_type", apath, where)),
            )
        )
    unannotated = [raw for key, raw in asked.items() if key not in seen]
    if unannotated:
        raise EvalInputError(
            f"{len(unannotated)} questions have no annotation in {apath}, e.g. question id {unannotated[0]!r}", qpath, unannotated[0]
        )
    if not out:
        raise EvalInputError("no annotated questions", apath)
    return VQADataset(name, "vqa_accuracy", out, [str(qpath), str(apath)])


def read_vizwiz(path: str | Path) -> VQADataset:
    """VizWiz `val.json`: a list of questions keyed by image file name; "unanswerable" is an ordinary answer."""
    path = Path(path)
    data = read_json(path, "VizWiz annotations")
    if not isinstance(data, list):
        raise EvalInputError(f"VizWiz annotations must be a JSON list, got {type(data).__name__}", path)
    out: list[VQAQuestion] = []
    seen: set[str] = set()
    for i, record in enumerate(data):
        where = f"[{i}]"
        raw = _field(record, "image", path, where)
        key = id_key(raw, path, f"{where}.image")
        if key in seen:
            raise EvalInputError(f"image {raw!r} appears twice", path, raw)
        seen.add(key)
        out.append(VQAQuestion(key, _answers_of(record, path, where, raw), str(_field(record, "answer_type", path, where)), None))
    if not out:
        raise EvalInputError("no questions", path)
    return VQADataset("vizwiz", "vqa_accuracy", out, [str(path)])


def read_gqa(path: str | Path) -> VQADataset:
    """GQA `testdev_balanced_questions.json`: {qid: {imageId, question, answer, types, ...}}."""
    path = Path(path)
    data = read_json(path, "GQA questions")
    if not isinstance(data, dict):
        raise EvalInputError(f"GQA questions must be a JSON object keyed by question id, got {type(data).__name__}", path)
    out: list[VQAQuestion] = []
    for qid, record in data.items():
        answer = _field(record, "answer", path, f"question {qid!r}")
        if not isinstance(answer, str):
            raise EvalInputError(f"question id {qid!r} has a non-string answer {answer!r}", path, qid)
        types = record.get("types") or {}
        out.append(VQAQuestion(str(qid), (answer,), str(types.get("structural", "unknown")), types.get("detailed")))
    if not out:
        raise EvalInputError("no questions", path)
    return VQADataset("gqa", "exact_match", out, [str(path)])


def detect_vqa_layout(questions_path: str | Path | None, annotations_path: str | Path | None) -> str:
    """"vqa" (VQAv2/OK-VQA), "vizwiz" or "gqa", from the files' content."""
    if annotations_path is not None:
        data = read_json(annotations_path, "annotations")
        if isinstance(data, list):
            return "vizwiz"
        return "vqa"
    if questions_path is not None:
        data = read_json(questions_path, "questions")
        if isinstance(data, dict) and "questions" not in data:
            return "gqa"
        raise EvalInputError("a VQA-format questions file needs its annotations file (--annotations)", questions_path)
    raise EvalInputError("no ground truth given: pass --questions and/or --annotations")


def read_vqa_dataset(questions_path: str | Path | None, annotations_path: str | Path | None, dataset: str = "auto") -> VQADataset:
    """Dispatch on the dataset name ("auto" looks at the files): vqav2, okvqa, vizwiz or gqa."""
    layout = detect_vqa_layout(questions_path, annotations_path) if dataset == "auto" else dataset
    if layout in ("vqa", "vqav2", "okvqa"):
        if questions_path is None or annotations_path is None:
            raise EvalInputError(f"{layout} needs both --questions and --annotations")
        return read_vqa_official(questions_path, annotations_path, name=layout)
    if layout == "vizwiz":
        if annotations_path is None:
            raise EvalInputError("vizwiz needs --annotations val.json")
        return read_vizwiz(annotations_path)
    if layout == "gqa":
        if questions_path is None:
            raise EvalInputError("gqa needs --questions testdev_balanced_questions.json")
        return read_gqa(questions_path)
    raise EvalInputError(f"unknown dataset {dataset!r}; known: auto, vqav2, okvqa, vizwiz, gqa")


# (id field, answer field) pairs accepted in VQA prediction records, the VQA results format first.
PREDICTION_FIELDS = (("question_id", "answer"), ("image", "answer"), ("questionId", "prediction"))


def _prediction_pair(record: Any, path: Path, where: str) -> tuple[str, str]:
    if isinstance(record, dict):
        for id_field, answer_field in PREDICTION_FIELDS:
            if id_field in record and answer_field in record:
                raw, answer = record[id_field], record[answer_field]
                if not isinstance(answer, str):
                    raise EvalInputError(f"{where}: the answer of id {raw!r} must be a string, got {answer!r}", path, raw)
                return id_key(raw, path, f"{where}.{id_field}"), answer
    raise EvalInputError(
        f"{where} must be an object with one of {[list(p) for p in PREDICTION_FIELDS]}, got {str(record)[:120]}", path
    )


def iter_vqa_predictions(path: str | Path) -> Iterator[tuple[str, str]]:
    """(question id, answer) pairs from a results file; a `.jsonl` file is streamed line by line.

    Duplicates, unknown ids and empty sets are the scorer's to check (it knows the ground truth).
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise EvalInputError("predictions file not found", path)
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise EvalInputError(f"line {lineno} is not valid JSON ({err.msg})", path) from None
                yield _prediction_pair(record, path, f"line {lineno}")
        return
    data = read_json(path, "predictions")
    if not isinstance(data, list):
        raise EvalInputError(f"predictions must be a JSON list of {{'question_id', 'answer'}}, got {type(data).__name__}", path)
    for i, record in enumerate(data):
        yield _prediction_pair(record, path, f"predictions[{i}]")
