"""VILA Table 5's instruction-following benchmarks: readers of their official files and local scorers.

    scienceqa_img   ScienceQA test, questions with an image (SQA-I), option-letter accuracy
    pope            POPE (COCO) random / popular / adversarial: accuracy, precision, recall, F1, yes-ratio per split;
                    headline F1 averaged over the three splits (LLaVA-1.5's protocol, which VILA follows)
    mme             MME: per subtask acc (questions) and acc+ (images with both questions right), score = acc + acc+;
                    perception = sum over the 10 perception subtasks, cognition = sum over the 4 cognition subtasks
    mmbench_dev, mmbench_cn_dev   MMBench (English / Chinese) dev with answers: circular evaluation, a question counts
                    only when every circular shift of its options is answered right
    seed_bench_img  SEED-Bench, the image questions (dimensions 1-9): option-letter accuracy, overall and per dimension

Every benchmark is a "vqa"-kind task (the model's `answer`): the reader writes the options into the question text
("A. ...\\nB. ..."), the task's prompt adds the answer instruction. Ground truth and what a scorer needs travel in
the samples (ids and references), so each scorer is a registered metric `(references, predictions, variant)`:

- multiple choice (ScienceQA, MMBench, SEED): references = (correct letter, option A text, option B text, ...);
  the prediction's letter is read by `parse_choice` (a leading option letter, else an exact option text);
- POPE: id "<split>/<question_id>", references = ("yes" | "no"); the answer is read as LLaVA's POPE evaluation
  does (first sentence; "no" / "not" as a word -> no, anything else -> yes);
- MME: id "<subtask>/<image>#<k>", references = ("Yes" | "No"); the answer is read as the MME tool does
  ("yes"/"no", else "yes"/"no" within its first 4 characters, else neither: wrong);
- MMBench: id "<index>#<shift>", one sample per circular shift (the reader makes them).

Official layouts under the data root:
    scienceqa/problems.json ({pid: {question, choices, answer, hint, image, split, ...}}) + scienceqa/images/test/<pid>/<image>
    pope/coco_pope_{random,popular,adversarial}.json (JSON lines {question_id, image, text, label}) + coco/images/val2014/
    mme/MME_Benchmark_release_version/<subtask>/: <name>.txt ("question\\tYes|No" lines) next to <name>.jpg|png, or
        questions_answers_YN/<name>.txt + images/<name>.jpg|png (artwork, celebrity, landmark, posters, scene)
    mmbench/mmbench_dev_20230712.tsv, mmbench/mmbench_dev_cn_20231003.tsv (index, question, hint, A-D, answer, category,
        image as base64, ...); images are decoded once into $EVAL_EXTRACT_DIR (default: the system temp folder)
    seed_bench/SEED-Bench.json ({questions: [{question_id, question, choice_a..d, answer, data_id, data_type,
        question_type_id}]}) + seed_bench/SEED-Bench-image/<data_id>
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from eval.datasets import _field, read_json
from eval.errors import EvalInputError
from eval.interface import EvalSample, SampleId
from eval.runner import register_metric

LETTERS = "ABCDEFGHIJ"


def option_lines(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _take(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


# =============================================================================================
# Multiple choice: reading the letter, accuracy, circular evaluation.


def parse_choice(prediction: str, options: list[str] | tuple[str, ...]) -> str | None:
    """The option letter a free-form answer picks: a leading letter of an option ("B", "B.", "(B) cat", "B: cat"),
    else the option whose text the answer is (case and a final period ignored); None when it picks none."""
    text = prediction.strip()
    letters = LETTERS[: len(options)]
    match = re.match(r"^\(?([A-Z])(?:$|[\).:,\s])", text)
    if match and match.group(1) in letters:
        return match.group(1)
    normal = text.rstrip(".").strip().lower()
    for letter, option in zip(letters, options):
        if normal and normal == str(option).rstrip(".").strip().lower():
            return letter
    return None


def _choice_correct(references: list[Any], prediction: Any) -> bool:
    return prediction is not None and parse_choice(str(prediction), [str(o) for o in references[1:]]) == references[0]


@register_metric("choice_accuracy", variants=("leading letter or exact option text",))
def choice_accuracy(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """Percent of questions whose answer picks the correct option (missing answers are wrong). An id of the form
    "<group>/<question>" (SEED-Bench's dimension) also gets a per-group accuracy "accuracy/<group>"."""
    hits = {i: _choice_correct(refs, predictions.get(i)) for i, refs in references.items()}
    out = {"accuracy": 100.0 * sum(hits.values()) / len(hits)}
    groups: dict[str, list[bool]] = {}
    for i, hit in hits.items():
        if "/" in str(i):
            groups.setdefault(str(i).split("/", 1)[0], []).append(hit)
    for group, values in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0])):
        out[f"accuracy/{group}"] = 100.0 * sum(values) / len(values)
    return out


@register_metric("circular_accuracy", variants=("MMBench CircularEval",))
def circular_accuracy(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    """MMBench: ids "<index>#<shift>"; a question is right only when all its shifts are. Also the plain accuracy
    of the unshifted pass ("accuracy/single_pass")."""
    by_question: dict[str, list[bool]] = {}
    single: list[bool] = []
    for i, refs in references.items():
        index, _, shift = str(i).rpartition("#")
        if not index or not shift.isdigit():
            raise EvalInputError(f"MMBench sample id {i!r} is not of the form <index>#<shift>")
        hit = _choice_correct(refs, predictions.get(i))
        by_question.setdefault(index, []).append(hit)
        if shift == "0":
            single.append(hit)
    out = {"circular_accuracy": 100.0 * sum(all(h) for h in by_question.values()) / len(by_question)}
    if single:
        out["accuracy/single_pass"] = 100.0 * sum(single) / len(single)
    return out


# =============================================================================================
# POPE


POPE_SPLITS = ("random", "popular", "adversarial")


def pope_answer(prediction: str) -> str:
    """LLaVA's POPE reading: the first sentence; "no" / "not" / "No" among its words -> "no", else "yes"."""
    text = prediction.strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", " ").split()
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_scores(pairs: list[tuple[str, str | None]]) -> dict[str, float]:
    """(label, prediction) pairs of one split -> accuracy, precision, recall, F1, yes-ratio in percent ("yes" is the
    positive class; a missing prediction counts as a wrong answer: the opposite of the label)."""
    tp = fp = tn = fn = 0
    for label, prediction in pairs:
        label = label.strip().lower()
        answer = pope_answer(prediction) if prediction is not None else ("no" if label == "yes" else "yes")
        if answer == "yes":
            tp, fp = tp + (label == "yes"), fp + (label != "yes")
        else:
            tn, fn = tn + (label == "no"), fn + (label != "no")
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / n, "precision": 100.0 * precision, "recall": 100.0 * recall,
            "F1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n}  # fmt: skip


@register_metric("pope", variants=("LLaVA POPE answer reading, F1 averaged over splits",))
def pope_metric(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    by_split: dict[str, list[tuple[str, str | None]]] = {}
    for i, refs in references.items():
        split = str(i).split("/", 1)[0]
        by_split.setdefault(split, []).append((str(refs[0]), None if i not in predictions else str(predictions[i])))
    out: dict[str, float] = {}
    per_split = {split: pope_scores(pairs) for split, pairs in by_split.items()}
    out["F1"] = sum(s["F1"] for s in per_split.values()) / len(per_split)
    out["accuracy"] = sum(s["accuracy"] for s in per_split.values()) / len(per_split)
    for split in sorted(per_split, key=lambda s: POPE_SPLITS.index(s) if s in POPE_SPLITS else len(POPE_SPLITS)):
        out.update({f"{name}/{split}": value for name, value in per_split[split].items()})
    return out


def pope_file(split: str) -> str:
    return f"pope/coco_pope_{split}.json"


def read_pope(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """The three POPE splits; `limit` takes the first questions of each split."""
    samples = []
    for split in POPE_SPLITS:
        path = data_root / pope_file(split)
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalInputError(f"line {n} is not valid JSON ({err.msg})", path) from None
            where = f"line {n}"
            label = str(_field(record, "label", path, where)).strip().lower()
            if label not in ("yes", "no"):
                raise EvalInputError(f"{where}: label must be yes or no, got {label!r}", path)
            rows.append(EvalSample(id=f"{split}/{_field(record, 'question_id', path, where)}",
                                   image=f"val2014/{_field(record, 'image', path, where)}",
                                   text=str(_field(record, "text", path, where)), references=(label,)))  # fmt: skip
        samples += _take(rows, limit)
    return samples, data_root / "coco/images"


# =============================================================================================
# MME


MME_ROOT = "mme/MME_Benchmark_release_version"
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def mme_answer(prediction: str) -> str:
    """The MME tool's reading: lower-cased; "yes"/"no" as is, else "yes" (then "no") within the first 4 characters,
    else "other" (always wrong)."""
    text = prediction.strip().lower().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(records: list[tuple[str, str, str, str | None]]) -> dict[str, float]:
    """(subtask, image, label, prediction) per question -> "acc/<t>", "acc+/<t>", "score/<t>" per subtask,
    "perception" and "cognition" (sums of the scores of the MME_PERCEPTION / MME_COGNITION subtasks present).
    acc: percent of questions right; acc+: percent of images whose questions are all right; score = acc + acc+."""
    per_task: dict[str, dict[str, list[bool]]] = {}
    for task, image, label, prediction in records:
        right = prediction is not None and mme_answer(prediction) == label.strip().lower()
        per_task.setdefault(task, {}).setdefault(image, []).append(right)
    out: dict[str, float] = {"perception": 0.0, "cognition": 0.0}
    for task, images in per_task.items():
        answers = [r for rights in images.values() for r in rights]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(rights) for rights in images.values()) / len(images)
        out.update({f"acc/{task}": acc, f"acc+/{task}": acc_plus, f"score/{task}": acc + acc_plus})
        if task in MME_COGNITION:
            out["cognition"] += acc + acc_plus
        elif task in MME_PERCEPTION:
            out["perception"] += acc + acc_plus
    return out


@register_metric("mme", variants=("MME eval_tool: score = acc + acc+ per subtask",))
def mme_metric(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
    records = []
    for i, refs in references.items():
        task, _, rest = str(i).partition("/")
        image = rest.rpartition("#")[0]
        records.append((task, image, str(refs[0]), None if i not in predictions else str(predictions[i])))
    return mme_scores(records)


def _mme_image(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def read_mme(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """Every subtask folder under MME_ROOT; `limit` takes the first images (both questions) of each subtask."""
    root = data_root / MME_ROOT
    samples = []
    subtasks = sorted(p for p in root.iterdir() if p.is_dir())
    if not subtasks:
        raise EvalInputError("no subtask folders", root)
    for folder in subtasks:
        nested = (folder / "questions_answers_YN").is_dir()
        text_dir, image_dir = (folder / "questions_answers_YN", folder / "images") if nested else (folder, folder)
        rows = []
        for n_image, txt in enumerate(sorted(text_dir.glob("*.txt"))):
            if limit is not None and n_image >= limit:
                break
            image = _mme_image(image_dir, txt.stem)
            if image is None:
                raise EvalInputError(f"no image {txt.stem}.jpg/.png next to its questions", txt)
            lines = [line for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
            for k, line in enumerate(lines):
                question, sep, label = line.rpartition("\t")
                if not sep or label.strip() not in ("Yes", "No"):
                    raise EvalInputError(f"line {k + 1} must be 'question<TAB>Yes|No', got {line[:80]!r}", txt)
                rows.append(EvalSample(id=f"{folder.name}/{image.name}#{k}", image=str(image.relative_to(root)),
                                       text=question.strip(), references=(label.strip(),)))  # fmt: skip
        samples += rows
    return samples, root


# =============================================================================================
# ScienceQA-IMG, SEED-Bench, MMBench


SCIENCEQA_PROBLEMS = "scienceqa/problems.json"
SCIENCEQA_IMAGES = "scienceqa/images/test/"  # the release's images/{train,val,test}/<pid>/


def read_scienceqa_img(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """Test problems with an image; text "Context: <hint>\\n<question>\\nA. ...\\nB. ..." (no context line when
    the hint is empty), as LLaVA's ScienceQA evaluation lays it out."""
    path = data_root / SCIENCEQA_PROBLEMS
    problems = read_json(path, "ScienceQA problems")
    if not isinstance(problems, dict):
        raise EvalInputError(f"ScienceQA problems must be a JSON object keyed by problem id, got {type(problems).__name__}", path)
    samples = []
    for pid, p in problems.items():
        where = f"problem {pid!r}"
        if _field(p, "split", path, where) != "test" or not p.get("image"):
            continue
        choices = [str(c) for c in _field(p, "choices", path, where)]
        answer = _field(p, "answer", path, where)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise EvalInputError(f"{where}: answer {answer!r} is not an index into its {len(choices)} choices", path, pid)
        hint = str(p.get("hint") or "").strip()
        text = (f"Context: {hint}\n" if hint else "") + f"{_field(p, 'question', path, where)}\n{option_lines(choices)}"
        samples.append(EvalSample(id=str(pid), image=f"{pid}/{p['image']}", text=text,
                                  references=(LETTERS[answer], *choices)))  # fmt: skip
    if not samples:
        raise EvalInputError("no test problems with an image", path)
    return _take(samples, limit), data_root / SCIENCEQA_IMAGES


SEED_JSON = "seed_bench/SEED-Bench.json"
SEED_IMAGES = "seed_bench/SEED-Bench-image/"


def read_seed_bench_img(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """SEED-Bench's image questions (data_type "image"); ids "<question_type_id>/<question_id>"."""
    path = data_root / SEED_JSON
    questions = _field(read_json(path, "SEED-Bench questions"), "questions", path, "the top level")
    samples = []
    for n, q in enumerate(questions):
        where = f"questions[{n}]"
        if _field(q, "data_type", path, where) != "image":
            continue
        choices = [str(_field(q, f"choice_{c}", path, where)) for c in "abcd"]
        answer = str(_field(q, "answer", path, where)).strip()
        if answer not in LETTERS[:4]:
            raise EvalInputError(f"{where}: answer {answer!r} is not one of A-D", path)
        samples.append(EvalSample(
            id=f"{_field(q, 'question_type_id', path, where)}/{_field(q, 'question_id', path, where)}",
            image=str(_field(q, "data_id", path, where)),
            text=f"{_field(q, 'question', path, where)}\n{option_lines(choices)}", references=(answer, *choices),
        ))  # fmt: skip
    if not samples:
        raise EvalInputError("no image questions (data_type 'image')", path)
    return _take(samples, limit), data_root / SEED_IMAGES


MMBENCH_DEV = "mmbench/mmbench_dev_20230712.tsv"
MMBENCH_CN_DEV = "mmbench/mmbench_dev_cn_20231003.tsv"


def extract_dir(source: Path) -> Path:
    """Where the images embedded in `source` are decoded to: one folder per (path, size, mtime) of the file."""
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("EVAL_EXTRACT_DIR") or Path(tempfile.gettempdir()) / "eval-extracted")
    return base / f"{source.stem}-{key}"


def _image_suffix(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


def read_mmbench_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of an MMBench TSV (every cell as text, empty for absent options)."""
    csv.field_size_limit(sys.maxsize)  # base64 images are longer than csv's default cell limit
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    needed = ("index", "question", "A", "B", "answer", "image")
    missing = [c for c in needed if rows and c not in rows[0]]
    if not rows or missing:
        raise EvalInputError(f"MMBench TSV has no rows or lacks columns {missing or list(needed)}", path)
    return rows


def _cell(row: dict[str, str], key: str) -> str:
    value = (row.get(key) or "").strip()
    return "" if value.lower() == "nan" else value


def mmbench_reader(tsv: str):
    def read(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
        """One sample per circular shift of each question's options: shift s puts option (i + s) mod n at letter i.
        Text: "<hint>\\n<question>\\nA. ...\\nB. ..." (the hint line only when there is one), as LLaVA's MMBench
        evaluation builds it; `limit` takes the first questions (all their shifts)."""
        path = data_root / tsv
        out_dir = extract_dir(path)
        samples = []
        for n, row in enumerate(_take(read_mmbench_tsv(path), limit)):
            index = _cell(row, "index")
            options = [o for o in (_cell(row, c) for c in "ABCD") if o]
            answer = _cell(row, "answer")
            if answer not in LETTERS[: len(options)]:
                raise EvalInputError(f"row {n + 1} (index {index}): answer {answer!r} is not one of its options", path, index)
            try:
                data = base64.b64decode(_cell(row, "image"), validate=True)
            except ValueError:
                raise EvalInputError(f"row {n + 1} (index {index}): image is not base64", path, index) from None
            name = f"{index}{_image_suffix(data)}"
            if not (out_dir / name).is_file():
                from harness.io import atomic_write_bytes

                atomic_write_bytes(out_dir / name, data)
            hint, question = _cell(row, "hint"), _cell(row, "question")
            correct = LETTERS.index(answer)
            for shift in range(len(options)):
                rotated = options[shift:] + options[:shift]
                text = (f"{hint}\n" if hint else "") + f"{question}\n{option_lines(rotated)}"
                letter = LETTERS[(correct - shift) % len(options)]
                samples.append(EvalSample(id=f"{index}#{shift}", image=name, text=text, references=(letter, *rotated)))
        return samples, out_dir

    return read
