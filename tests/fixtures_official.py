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
  knowledge/{dev,test}/<subject>_{dev,test}.csv, and the demonstration pool eval/captions_train.json,
  eval/vqa_train_{questions,annotations}.json, images/train/<id>.png
- the train splits the in-context tasks draw demonstrations from (COCO/Flickr30k Karpathy train, OK-VQA train2014,
  TextVQA train)
- VILA Table 5: TextVQA, ScienceQA, POPE, MME, MMBench (+CN), SEED-Bench, LLaVA-Bench, MM-Vet; BBH and DROP

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
COCO_TRAIN_IDS = [9, 25, 30, 34, 36]  # train2014 ids: in-context demonstrations
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
    for k, image_id in enumerate(COCO_TRAIN_IDS):  # demonstrations of the in-context tasks (train + restval)
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_image(root / "coco/images/train2014" / name, color_name(k))
        images.append({"filepath": "train2014", "sentids": [], "filename": name, "imgid": 100 + k,
                       "split": "restval" if k == 0 else "train", "sentences": _sentences(color_name(k), 100 + k),
                       "cocoid": image_id})  # fmt: skip
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
    for k, number in enumerate((1001545525, 1001573224, 1001633352, 1001773457)):  # train: demonstrations
        name = f"{number}.jpg"
        write_image(root / "flickr30k/flickr30k-images" / name, color_name(k))
        images.append({"sentids": [], "imgid": 10 + k, "sentences": _sentences(color_name(k), 10 + k), "split": "train",
                       "filename": name})  # fmt: skip
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
    """val (the test queries) and train (the in-context demonstrations, images under coco/images/train2014/)."""
    write_coco_images(root)
    _write_vqa_official(root / "okvqa/OpenEnded_mscoco_val2014_questions.json",
                        root / "okvqa/mscoco_val2014_annotations.json", COCO_IDS, "val2014")  # fmt: skip
    for k, image_id in enumerate(COCO_TRAIN_IDS):
        write_image(root / "coco/images/train2014" / f"COCO_train2014_{image_id:012d}.jpg", color_name(k))
    _write_vqa_official(root / "okvqa/OpenEnded_mscoco_train2014_questions.json",
                        root / "okvqa/mscoco_train2014_annotations.json", COCO_TRAIN_IDS, "train2014")  # fmt: skip


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


def write_textvqa(root: Path) -> None:
    """TextVQA 0.5.1 val (6 questions) and train (5, demonstrations); images in textvqa/train_images/."""
    for split, n in (("val", 6), ("train", 5)):
        data = []
        for k, (question, answer) in enumerate(_vqa_pairs(n)):
            image_id = f"{split}{k:012x}"
            write_image(root / "textvqa/train_images" / f"{image_id}.jpg", color_name(k))
            data.append({"question": question, "image_id": image_id, "image_classes": ["Poster"], "flickr_original_url": "",
                         "flickr_300k_url": "", "image_width": 8, "image_height": 8, "answers": [answer] * 10,
                         "question_tokens": question.split(), "question_id": 34602 + k + (100 if split == "train" else 0),
                         "set_name": split})  # fmt: skip
        _json(root / f"textvqa/TextVQA_0.5.1_{split}.json",
              {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})


def _choices(k: int) -> tuple[list[str], int]:
    """Colour options of position k and the correct index: the image's colour at even k, another colour at odd k
    (a model answering the colour it sees picks the right option exactly at even positions)."""
    options = [color_name(k + j) for j in range(3)]  # the image's colour is options[0]
    return options, (0 if k % 2 == 0 else 1)


def write_scienceqa(root: Path) -> None:
    """problems.json: 6 test problems with an image (2 with a hint), 1 test problem without, 1 train problem."""
    problems = {}
    for k in range(6):
        pid = str(100 + k)
        options, answer = _choices(k)
        write_image(root / "scienceqa/images/test" / pid / "image.png", color_name(k))
        problems[pid] = {"question": f"Which colour fills picture {k}?", "choices": options, "answer": answer,
                         "hint": "The picture is plain." if k < 2 else "", "image": "image.png", "task": "closed choice",
                         "grade": "grade2", "subject": "natural science", "topic": "colors", "category": "Colors",
                         "skill": "Identify colours", "lecture": "", "solution": "", "split": "test"}  # fmt: skip
    problems["200"] = {**problems["100"], "image": None}
    problems["300"] = {**problems["101"], "split": "train"}
    _json(root / "scienceqa/problems.json", problems)


def write_pope(root: Path) -> None:
    """coco_pope_<split>.json: 4 JSON lines per split on the COCO fixture images, labels yes, no, yes, no."""
    write_coco_images(root)
    for split in ("random", "popular", "adversarial"):
        lines = [json.dumps({"question_id": q + 1, "image": coco_file(COCO_IDS[q]), "text": f"Is there a {split} {q} in the image?",
                             "label": "yes" if q % 2 == 0 else "no"}) for q in range(4)]  # fmt: skip
        path = root / f"pope/coco_pope_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


def write_mme(root: Path) -> None:
    """Two subtasks: existence (flat layout, 3 images) and artwork (questions_answers_YN/ + images/, 1 image)."""
    base = root / "mme/MME_Benchmark_release_version"
    for k in range(3):
        write_image(base / "existence" / f"00000{k}.jpg", color_name(k))
        (base / "existence" / f"00000{k}.txt").write_text(f"Is there a {color_name(k)} area?\tYes\nIs there a cat?\tNo\n")
    write_image(base / "artwork/images" / "10002.jpg", color_name(2))
    (base / "artwork/questions_answers_YN").mkdir(parents=True, exist_ok=True)
    (base / "artwork/questions_answers_YN" / "10002.txt").write_text("Is this painted?\tYes\nIs this a photo?\tNo\n")


def _png_base64(name: str) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), COLORS[name]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_mmbench(root: Path) -> None:
    """mmbench_dev_20230712.tsv and mmbench_dev_cn_20231003.tsv: 3 questions with 3 colour options (+ empty D)."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]
    for name, question in (("mmbench_dev_20230712.tsv", "Which colour is this?"), ("mmbench_dev_cn_20231003.tsv", "这是什么颜色？")):
        path = root / "mmbench" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            for k in range(3):
                options, answer = _choices(k)
                writer.writerow([k, question, "A plain picture." if k == 0 else "nan", *options, "", "ABC"[answer],
                                 "attribute_recognition", _png_base64(color_name(k)), "fixture", "FP-S", "nan", "dev"])  # fmt: skip


def write_seed_bench(root: Path) -> None:
    """SEED-Bench.json: 6 image questions over dimensions 1-2 and one video question (left out)."""
    questions = []
    for k in range(6):
        options, answer = _choices(k)
        data_id = f"{1454426 + k}_2591111986.jpg"
        write_image(root / "seed_bench/SEED-Bench-image" / data_id, color_name(k))
        questions.append({"answer": "ABCD"[answer], "choice_a": options[0], "choice_b": options[1], "choice_c": options[2],
                          "choice_d": "purple", "data_id": data_id, "data_type": "image", "question": "What colour is it?",
                          "question_id": str(101669 + k), "question_type_id": 1 + k % 2})  # fmt: skip
    questions.append({**questions[0], "data_type": "video", "question_id": "v1", "question_type_id": 10, "data_id": "v.mp4"})
    _json(root / "seed_bench/SEED-Bench.json", {"questions": questions, "question_type": {"Scene Understanding": 1, "Instance Identity": 2}})


def write_llava_bench(root: Path) -> None:
    questions, answers, context = [], [], []
    for k in range(3):
        image = f"{k + 1:03d}.jpg"
        write_image(root / "llava_bench/images" / image, color_name(k))
        questions.append({"image": image, "text": "Describe the picture.", "category": ("conv", "detail", "complex")[k], "question_id": k})
        answers.append({"question_id": k, "text": f"A plain {color_name(k)} picture.", "answer_id": "x", "model_id": "gpt-4-0314"})
        context.append({"id": f"c{k}", "image": image, "caption": f"A {color_name(k)} square."})
    for name, rows in (("questions", questions), ("answers_gpt4", answers), ("context", context)):
        path = root / f"llava_bench/{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_mm_vet(root: Path) -> None:
    data = {}
    for k in range(3):
        write_image(root / "mm_vet/images" / f"v1_{k}.png", color_name(k))
        data[f"v1_{k}"] = {"imagename": f"v1_{k}.png", "capability": ["rec"] + (["ocr"] if k else []),
                           "question": "What colour is it?", "answer": color_name(k)}  # fmt: skip
    _json(root / "mm_vet/mm-vet.json", data)


BBH_TASKS = ("boolean_expressions", "sports_understanding")


def write_bbh(root: Path) -> None:
    """Two tasks of the BIG-Bench-Hard release: bbh/<task>.json and cot-prompts/<task>.txt (3 CoT exemplars)."""
    for task in BBH_TASKS:
        _json(root / f"bbh/bbh/{task}.json", {"canary": "fixture", "examples": [
            {"input": f"{task} question {q}", "target": "True" if q % 2 == 0 else "False"} for q in range(4)]})  # fmt: skip
        shots = "".join(f"\n\nQ: {task} exemplar {q}\nA: Let's think step by step.\nIt is so. So the answer is {'True' if q else 'False'}."
                        for q in range(3))  # fmt: skip
        path = root / f"bbh/cot-prompts/{task}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"Evaluate the {task}.\n\n-----{shots}\n")


def write_drop(root: Path) -> None:
    def qa(qid: str, number: str, spans: list[str]) -> dict:
        answer = {"number": number, "date": {"day": "", "month": "", "year": ""}, "spans": spans}
        return {"question": f"How many in {qid}?", "answer": answer, "query_id": qid, "validated_answers": [answer]}

    for split in ("train", "dev"):
        _json(root / f"drop/drop_dataset_{split}.json", {
            f"nfl_{split}_{p}": {"passage": f"Passage {p} of {split}.", "qa_pairs": [qa(f"{split}{p}a", str(p + 1), []),
                                                                               qa(f"{split}{p}b", "", ["the Bears"])],
                                 "wiki_url": ""} for p in range(3)})  # fmt: skip


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
    # knowledge/facts.jsonl: the fact behind each question (mini_knowledge_recall completes its statement)
    facts = [{"kind": "countries", "entity": f"Land{s}{q}", "attribute": "capital", "value": ("one", "two", "None", "four")[q % 4],
              "subject": subject, "question": f"{subject} question {q}?"}
             for s, subject in enumerate(KNOWLEDGE_SUBJECTS) for q in range(N_TEST_QUESTIONS)]  # fmt: skip
    (root / "knowledge" / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    # the in-context demonstration pool (harness/miniworld.py write_fewshot_pool): 5 train images
    train = []
    for i in range(100, 105):
        write_image(root / "images/train" / f"{i}.png", color_name(i))
        train.append({"split": "train", "filepath": "images/train", "filename": f"{i}.png", "imgid": i,
                      "sentences": [{"raw": s["raw"], "tokens": s["tokens"]} for s in _sentences(color_name(i), i)]})  # fmt: skip
    _json(root / "eval/captions_train.json", {"dataset": "miniworld", "images": train})
    _write_vqa_official(root / "eval/vqa_train_questions.json", root / "eval/vqa_train_annotations.json", list(range(100, 105)), "train")


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
    "mini_t2i": write_miniworld,
    "mini_vqa": write_miniworld,
    "mini_vqa_image_shuffle": write_miniworld,
    "mini_knowledge": write_miniworld,
    "mini_knowledge_recall": write_miniworld,
    "textvqa_val": write_textvqa,
    "scienceqa_img": write_scienceqa,
    "pope": write_pope,
    "mme": write_mme,
    "mmbench_dev": write_mmbench,
    "mmbench_cn_dev": write_mmbench,
    "seed_bench_img": write_seed_bench,
    "llava_bench": write_llava_bench,
    "mm_vet": write_mm_vet,
    "bbh": write_bbh,
    "drop": write_drop,
    **{f"{base}_{k[0]}shot{k[1:]}": writer for base, writer in (
        ("okvqa_val", write_okvqa), ("textvqa_val", write_textvqa), ("coco_karpathy_test", write_coco_karpathy),
        ("flickr30k_test", write_flickr30k), ("mini_vqa", write_miniworld), ("mini_caption", write_miniworld))
       for k in ("0", "4", "4_shuffled")},
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

    def generate_interleaved(self, sequences, **generation):
        """The colour of the sequence's last image, then what a model would go on with (cut off by the runner)."""
        self.calls.append(("generate_interleaved", len(sequences), generation))
        last = [next(p for p in reversed(seq) if isinstance(p, Image.Image)) for seq in sequences]
        return [f" {image_color(im)}\nQuestion: and more" for im in last]


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
    return LoadedModel(model_id=ColorModel.model_id, adapter=ColorModel(), llm=answer_a_lm(), config={"kind": "standin"},
                       source="released")  # fmt: skip


def register_standin_family() -> str:
    from model.families import Family, families, register_family

    if "standin" not in families():
        register_family(Family(name="standin", title="stand-in (tests)", loader="fixtures_official:load_standin"))
    return "standin"
