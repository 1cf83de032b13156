"""Tiny datasets in each benchmark's official file layout, under one data root (the layout `eval/tasks.py` reads).

    root = write_all(tmp_path)      # every dataset below, plus tiny images

Each writer makes a handful of records in the JSON format the dataset was released in (field names and nesting
as in the real files, extra fields included) and 8x8 images whose colour encodes a known answer:
`image_color(path)` reads it back, so a stand-in model can "see" and the expected scores are known exactly.

- COCO Karpathy: coco/annotations/dataset_coco.json + coco/images/val2014/COCO_val2014_<id:012d>.jpg
- COCO captions val2014 (COCO-30k prompts): coco/annotations/captions_val2014.json (same images)
- Flickr30k Karpathy: flickr30k/annotations/dataset_flickr30k.json + flickr30k/flickr30k-images/<n>.jpg
- NoCaps val: nocaps/annotations/nocaps_val_4500_captions.json + nocaps/images/val/<open images id>.jpg
- VQAv2 val: vqav2/v2_OpenEnded_mscoco_val2014_questions.json + vqav2/v2_mscoco_val2014_annotations.json
- OK-VQA val: okvqa/OpenEnded_mscoco_val2014_questions.json + okvqa/mscoco_val2014_annotations.json
- GQA testdev: gqa/testdev_balanced_questions.json + gqa/images/<imageId>.jpg
- VizWiz val: vizwiz/Annotations/val.json + vizwiz/val/VizWiz_val_<n:08d>.jpg
- MMLU: mmlu/{dev,test}/<subject>_{dev,test}.csv
- the mini world: eval/captions_test.json, eval/vqa_test_{questions,annotations}.json, images/test/<id>.png,
  knowledge/{dev,test}/<subject>_{dev,test}.csv

VQA-style questions alternate: even positions are answered by the image's colour name, odd ones by another
colour, so a model answering with the colour it sees scores exactly 50% on any even-sized prefix. MMLU-format
test questions alternate answers 0, 1, 2, 3.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from PIL import Image

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
NAMES = list(COLORS)
COCO_IDS = [391895, 522418, 184613, 318219, 554625, 397133]  # real val2014 ids, used only as numbers
MMLU_SUBJECTS = ("abstract_algebra", "philosophy")
KNOWLEDGE_SUBJECTS = ("zorblax_geography", "quendi_history")
N_TEST_QUESTIONS = 8  # per MMLU-format subject


def color_name(index: int) -> str:
    return NAMES[index % len(NAMES)]


def write_image(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8, 8), COLORS[name])
    image.save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=95)


def image_color(image: Image.Image) -> str:
    """The fixture colour nearest to the image's centre pixel (JPEG shifts it a little)."""
    pixel = image.convert("RGB").getpixel((4, 4))
    return min(NAMES, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLORS[n], pixel)))


def _json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _sentences(name: str, imgid: int) -> list[dict]:
    raws = [f"a {name} square.", f"A plain {name} image", f"the colour {name} fills the picture"]
    return [{"tokens": r.lower().rstrip(".").split(), "raw": r, "imgid": imgid, "sentid": imgid * 10 + k}
            for k, r in enumerate(raws)]  # fmt: skip


def coco_file(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.jpg"


def write_coco_images(root: Path) -> None:
    for k, image_id in enumerate(COCO_IDS):
        write_image(root / "coco/images/val2014" / coco_file(image_id), color_name(k))


def write_coco_karpathy(root: Path) -> None:
    """dataset_coco.json: one train and one val image, the rest test (the reader keeps the test split only)."""
    write_coco_images(root)
    images = []
    for k, image_id in enumerate(COCO_IDS):
        split = "train" if k == 0 else "val" if k == 1 else "test"
        images.append({"filepath": "val2014", "sentids": [k * 10 + j for j in range(3)], "filename": coco_file(image_id),
                       "imgid": k, "split": split, "sentences": _sentences(color_name(k), k), "cocoid": image_id})  # fmt: skip
    _json(root / "coco/annotations/dataset_coco.json", {"images": images, "dataset": "coco"})


def write_coco_captions_val2014(root: Path) -> None:
    write_coco_images(root)
    images = [{"license": 1, "file_name": coco_file(i), "coco_url": "", "height": 8, "width": 8, "date_captured": "",
               "flickr_url": "", "id": i} for i in COCO_IDS]  # fmt: skip
    annotations = [{"image_id": i, "id": 1000 + 10 * k + j, "caption": s["raw"]}
                   for k, i in enumerate(COCO_IDS) for j, s in enumerate(_sentences(color_name(k), k))]  # fmt: skip
    _json(root / "coco/annotations/captions_val2014.json",
          {"info": {"description": "COCO 2014 Dataset"}, "licenses": [], "images": images, "annotations": annotations})  # fmt: skip


def write_flickr30k(root: Path) -> None:
    images = []
    for k, number in enumerate((1000092795, 10002456, 1000268201, 1000344755, 1000366164)):
        name = f"{number}.jpg"
        write_image(root / "flickr30k/flickr30k-images" / name, color_name(k))
        images.append({"sentids": [k * 10 + j for j in range(3)], "imgid": k, "sentences": _sentences(color_name(k), k),
                       "split": "val" if k == 0 else "test", "filename": name})  # fmt: skip
    _json(root / "flickr30k/annotations/dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})


def write_nocaps(root: Path) -> None:
    domains = ("in-domain", "near-domain", "out-domain", "in-domain", "near-domain", "out-domain")
    images, annotations = [], []
    for k, domain in enumerate(domains):
        open_images_id = f"{k:04x}ea2087020901"
        name = f"{open_images_id}.jpg"
        write_image(root / "nocaps/images/val" / name, color_name(k))
        images.append({"id": k, "open_images_id": open_images_id, "height": 8, "width": 8, "coco_url": "",
                       "file_name": name, "license": 0, "date_captured": "", "domain": domain})  # fmt: skip
        annotations += [{"image_id": k, "id": k * 10 + j, "caption": s["raw"]} for j, s in enumerate(_sentences(color_name(k), k))]
    _json(root / "nocaps/annotations/nocaps_val_4500_captions.json",
          {"licenses": [], "info": {"url": "https://nocaps.org"}, "images": images, "annotations": annotations})  # fmt: skip


def _vqa_pairs(n: int) -> list[tuple[str, str]]:
    """(question, answer) per position; the image of position k has colour color_name(k)."""
    pairs = []
    for k in range(n):
        answer = color_name(k) if k % 2 == 0 else color_name(k + 1)
        pairs.append((f"What color is the picture {k}?", answer))
    return pairs


def _write_vqa_official(questions_path: Path, annotations_path: Path, image_ids: list[int], subtype: str) -> None:
    questions, annotations = [], []
    for k, ((question, answer), image_id) in enumerate(zip(_vqa_pairs(len(image_ids)), image_ids)):
        qid = image_id * 1000 + k
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
        annotations.append({"question_type": "what color is the", "multiple_choice_answer": answer, "answers": answers,
                            "image_id": image_id, "answer_type": "other", "question_id": qid})  # fmt: skip
    header = {"info": {"description": "fixture"}, "license": {}, "data_subtype": subtype}
    _json(questions_path, {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions})
    _json(annotations_path, {**header, "data_type": "mscoco", "annotations": annotations})


def write_vqav2(root: Path) -> None:
    write_coco_images(root)
    _write_vqa_official(root / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
                        root / "vqav2/v2_mscoco_val2014_annotations.json", COCO_IDS, "val2014")  # fmt: skip


def write_okvqa(root: Path) -> None:
    write_coco_images(root)
    _write_vqa_official(root / "okvqa/OpenEnded_mscoco_val2014_questions.json",
                        root / "okvqa/mscoco_val2014_annotations.json", COCO_IDS, "val2014")  # fmt: skip


def write_gqa(root: Path) -> None:
    questions = {}
    for k, (question, answer) in enumerate(_vqa_pairs(6)):
        image_id = f"n{161313 + k}"
        write_image(root / "gqa/images" / f"{image_id}.jpg", color_name(k))
        questions[f"20{k:06d}"] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": "picture"}], "entailed": [],
            "equivalent": [f"20{k:06d}"], "question": question, "imageId": image_id, "isBalanced": True,
            "groups": {"global": None, "local": "14-picture_color"}, "answer": answer, "semanticStr": "select: picture",
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": "color", "semantic": "attr", "structural": "query"}, "fullAnswer": f"It is {answer}.",
        }  # fmt: skip
    _json(root / "gqa/testdev_balanced_questions.json", questions)


def write_vizwiz(root: Path) -> None:
    records = []
    for k, (question, answer) in enumerate(_vqa_pairs(6)):
        name = f"VizWiz_val_{k:08d}.jpg"
        write_image(root / "vizwiz/val" / name, color_name(k))
        records.append({"image": name, "question": question, "answerable": 1, "answer_type": "other",
                        "answers": [{"answer": answer, "answer_confidence": "yes"} for _ in range(10)]})  # fmt: skip
    _json(root / "vizwiz/Annotations/val.json", records)


def _write_mmlu_csvs(folder: Path, subjects: tuple[str, ...]) -> None:
    header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    for subject in subjects:
        for split, n in (("dev", 5), ("test", N_TEST_QUESTIONS)):
            path = folder / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                for q in range(n):
                    writer.writerow([f"{subject} question {q}?", "one", "two", "None", "four", str(q % 4)])


def write_mmlu(root: Path) -> None:
    _write_mmlu_csvs(root / "mmlu", MMLU_SUBJECTS)


def write_miniworld(root: Path) -> None:
    """The mini world's evaluation files as harness/miniworld.py writes them (its root is the data root)."""
    images = []
    for i in range(6):
        write_image(root / "images/test" / f"{i}.png", color_name(i))
        images.append({"split": "test", "filepath": "images/test", "filename": f"{i}.png", "imgid": i,
                       "sentences": [{"raw": s["raw"], "tokens": s["tokens"]} for s in _sentences(color_name(i), i)]})  # fmt: skip
    _json(root / "eval/captions_test.json", {"dataset": "miniworld", "images": images})
    _write_vqa_official(root / "eval/vqa_test_questions.json", root / "eval/vqa_test_annotations.json", list(range(6)), "test")
    _write_mmlu_csvs(root / "knowledge", KNOWLEDGE_SUBJECTS)


WRITERS = {
    "coco_karpathy_test": write_coco_karpathy,
    "nocaps_val": write_nocaps,
    "flickr30k_test": write_flickr30k,
    "vqav2_val": write_vqav2,
    "okvqa_val": write_okvqa,
    "gqa_testdev": write_gqa,
    "vizwiz_val": write_vizwiz,
    "coco30k_fid": write_coco_captions_val2014,
    "mmlu": write_mmlu,
    "mini_caption": write_miniworld,
    "mini_vqa": write_miniworld,
    "mini_knowledge": write_miniworld,
}


def write_all(root: Path) -> Path:
    for writer in dict.fromkeys(WRITERS.values()):
        writer(root)
    return root


# ---------------------------------------------------------------------------------------------
# A stand-in model family: it sees the fixture colours, so its scores are known in advance.


class ColorModel:
    """Captions "a <colour> square", answers "<colour>", for the colour of the image's centre."""

    model_id = "standin-color-v1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict]] = []

    def caption(self, images, prompt, **generation):
        self.calls.append(("caption", len(images), generation))
        return [f"a {image_color(im)} square" for im in images]

    def answer(self, images, questions, **generation):
        self.calls.append(("answer", len(images), generation))
        return [image_color(im) for im in images]


def answer_a_lm():
    """An lm-eval LM that always prefers choice " A": its MMLU accuracy is the share of questions answered 0."""
    from lm_eval.api.model import LM
    from tqdm import tqdm

    class AlwaysA(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(0.0 if r.args[1] == " A" else -1.0, False) for r in tqdm(requests, disable=disable_tqdm, desc="loglikelihood")]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return AlwaysA()


def load_standin(path: str, device: str = "cpu", **options: Any):
    from model.families import LoadedModel

    if not Path(path).is_dir():
        raise FileNotFoundError(f"stand-in checkpoint directory {path} does not exist")
    return LoadedModel(model_id=ColorModel.model_id, adapter=ColorModel(), lm=answer_a_lm, config={"kind": "standin"},
                       source="released")  # fmt: skip


def register_standin_family() -> str:
    from model.families import Family, families, register_family

    if "standin" not in families():
        register_family(Family(name="standin", title="stand-in (tests)", stages=(), loader="fixtures_official:load_standin"))
    return "standin"
