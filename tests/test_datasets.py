"""Readers of the official caption and VQA files, on tiny synthetic files in the official layouts."""

from __future__ import annotations

import json

import pytest

from eval.datasets import (
    iter_vqa_predictions,
    read_caption_predictions,
    read_caption_references,
    read_coco_captions,
    read_gqa,
    read_json,
    read_karpathy_captions,
    read_vizwiz,
    read_vqa_dataset,
    read_vqa_official,
)
from eval.errors import EvalInputError


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _karpathy_image(split, filename, sentences, **ids):
    return {"split": split, "filename": filename, "imgid": 0, "sentids": [],
            "sentences": [{"raw": s, "tokens": s.lower().split(), "imgid": 0, "sentid": 0} for s in sentences], **ids}  # fmt: skip


# ----- JSON boundary ----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(EvalInputError, match=r"nope\.json: .*not found"):
        read_json(tmp_path / "nope.json", "questions")


def test_malformed_json_names_file_and_position(tmp_path):
    path = _write(tmp_path, "broken.json", '{"images": [1, 2,\n  ]}')
    with pytest.raises(EvalInputError, match=r"broken\.json: .*not valid JSON \(line 2"):
        read_json(path, "annotations")


# ----- captions ---------------------------------------------------------------------------------------


def test_karpathy_coco_keeps_only_the_split_and_keys_by_cocoid(tmp_path):
    path = _write(tmp_path, "dataset_coco.json", {"dataset": "coco", "images": [
        _karpathy_image("test", "COCO_val2014_000000391895.jpg", ["A man.", "A bike."], cocoid=391895),
        _karpathy_image("train", "COCO_train2014_000000000009.jpg", ["Food."], cocoid=9),
        _karpathy_image("restval", "COCO_val2014_000000000042.jpg", ["Dog."], cocoid=42),
    ]})  # fmt: skip
    refs = read_karpathy_captions(path, "test")
    assert refs.refs == {"391895": ["A man.", "A bike."]} and refs.layout == "karpathy"
    assert refs.original_ids == {"391895": 391895}
    assert read_caption_references(path).refs == refs.refs  # auto-detected layout


def test_karpathy_flickr_keys_by_filename_number(tmp_path):
    path = _write(tmp_path, "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        _karpathy_image("test", "1000092795.jpg", ["Two young guys."]),
        _karpathy_image("val", "10002456.jpg", ["Workers."]),
    ]})  # fmt: skip
    refs = read_karpathy_captions(path)
    assert refs.refs == {"1000092795": ["Two young guys."]} and refs.original_ids["1000092795"] == 1000092795


def test_karpathy_unknown_split_lists_the_splits_present(tmp_path):
    path = _write(tmp_path, "dataset_coco.json", {"images": [_karpathy_image("val", "a.jpg", ["x"], cocoid=1)]})
    with pytest.raises(EvalInputError, match=r"dataset_coco\.json: no images in split 'test' \(splits present: \['val'\]\)"):
        read_karpathy_captions(path, "test")


def test_coco_captions_group_by_image(tmp_path):
    path = _write(tmp_path, "captions_val2014.json", {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "a cat"}, {"image_id": 2, "id": 11, "caption": "a dog"},
                        {"image_id": 1, "id": 12, "caption": "a kitten"}],
    })  # fmt: skip
    refs = read_caption_references(path)
    assert refs.layout == "coco" and refs.domains is None
    assert refs.refs == {"1": ["a cat", "a kitten"], "2": ["a dog"]}


def test_nocaps_keeps_domains(tmp_path):
    path = _write(tmp_path, "nocaps_val_4500_captions.json", {
        "licenses": [], "info": {},
        "images": [{"id": 0, "open_images_id": "0013ea2087020901", "domain": "in-domain"},
                   {"id": 1, "open_images_id": "0017c4cbbd1f7b76", "domain": "out-domain"}],
        "annotations": [{"image_id": 0, "id": 0, "caption": "a bird"}, {"image_id": 1, "id": 1, "caption": "a jellyfish"}],
    })  # fmt: skip
    refs = read_coco_captions(path)
    assert refs.layout == "nocaps" and refs.domains == {"0": "in-domain", "1": "out-domain"}


@pytest.mark.parametrize(
    "images, annotations, message",
    [
        ([{"id": 1}], [{"image_id": 2, "caption": "x"}], r"annotations\[0\] refers to image id 2"),
        ([{"id": 1}, {"id": 1}], [{"image_id": 1, "caption": "x"}], r"image id 1 appears twice"),
        ([{"id": 1}, {"id": 2}], [{"image_id": 1, "caption": "x"}], r"no reference caption, e.g. image id 2"),
        ([{"id": 1, "domain": "far-domain"}], [{"image_id": 1, "caption": "x"}], r"image 1 has domain 'far-domain'"),
        ([{"id": 1}], [{"image_id": 1}], r"annotations\[0\] has no 'caption' field"),
    ],
)
def test_coco_caption_errors_name_file_and_id(tmp_path, images, annotations, message):
    path = _write(tmp_path, "gt.json", {"images": images, "annotations": annotations})
    with pytest.raises(EvalInputError, match=r"gt\.json: .*" + message):
        read_coco_captions(path)


def test_caption_predictions(tmp_path):
    ok = _write(tmp_path, "res.json", [{"image_id": 1, "caption": "a cat"}, {"image_id": 2, "caption": "a dog"}])
    assert read_caption_predictions(ok) == {"1": "a cat", "2": "a dog"}
    cases = [
        ([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}], r"image id 1 has more than one prediction"),
        ([], r"empty"),
        ({"image_id": 1, "caption": "a"}, r"must be a JSON list"),
        ([{"image_id": 1}], r"predictions\[0\] has no 'caption' field"),
        ([{"image_id": [1], "caption": "a"}], r"must be an int or a string, got \[1\]"),
    ]
    for obj, message in cases:
        path = _write(tmp_path, "bad_res.json", obj)
        with pytest.raises(EvalInputError, match=r"bad_res\.json: .*" + message):
            read_caption_predictions(path)


# ----- VQA --------------------------------------------------------------------------------------------


def _vqa_files(tmp_path, question_ids, annotated_ids, prefix="v2_"):
    qs = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
          "questions": [{"question_id": q, "image_id": q // 1000, "question": "What?"} for q in question_ids]}  # fmt: skip
    anns = {"info": {}, "data_subtype": "val2014", "annotations": [
        {"question_id": q, "image_id": q // 1000, "question_type": "what is", "answer_type": "other",
         "multiple_choice_answer": "cat",
         "answers": [{"answer": "cat", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]}
        for q in annotated_ids
    ]}  # fmt: skip
    q = _write(tmp_path, f"{prefix}OpenEnded_mscoco_val2014_questions.json", qs)
    a = _write(tmp_path, f"{prefix}mscoco_val2014_annotations.json", anns)
    return q, a


def test_vqav2_and_okvqa_reader(tmp_path):
    q, a = _vqa_files(tmp_path, [458752000, 458752001], [458752001, 458752000])
    data = read_vqa_official(q, a, "vqav2")
    assert [x.question_id for x in data.questions] == ["458752001", "458752000"]
    first = data.questions[0]
    assert first.answers == ("cat",) * 10 and first.answer_type == "other" and first.question_type == "what is"
    assert data.index == {"458752001": 0, "458752000": 1} and data.metric == "vqa_accuracy"
    okvqa = read_vqa_dataset(*_vqa_files(tmp_path, [5], [5], prefix=""), dataset="okvqa")
    assert okvqa.name == "okvqa" and len(okvqa) == 1


@pytest.mark.parametrize(
    "question_ids, annotated_ids, file, message",
    [
        ([1, 2], [1], "questions", r"1 questions have no annotation .* question id 2"),
        ([1], [1, 3], "annotations", r"question id 3 is annotated but not in the questions file"),
        ([1], [1, 1], "annotations", r"question id 1 is annotated twice"),
        ([1, 1], [1], "questions", r"question id 1 appears twice"),
    ],
)
def test_vqa_reader_errors_name_file_and_id(tmp_path, question_ids, annotated_ids, file, message):
    q, a = _vqa_files(tmp_path, question_ids, annotated_ids)
    name = q.name if file == "questions" else a.name
    with pytest.raises(EvalInputError, match=name.replace(".", r"\.") + ": " + message):
        read_vqa_official(q, a)


def test_vqa_reader_rejects_question_without_answers(tmp_path):
    q, a = _vqa_files(tmp_path, [7], [7])
    anns = json.loads(a.read_text())
    anns["annotations"][0]["answers"] = []
    a.write_text(json.dumps(anns))
    with pytest.raises(EvalInputError, match="question id 7 has no human answers"):
        read_vqa_official(q, a)


def test_vizwiz_reader(tmp_path):
    path = _write(tmp_path, "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answer_type": "unanswerable", "answerable": 0,
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
    ])  # fmt: skip
    data = read_vizwiz(path)
    assert data.questions[0].question_id == "VizWiz_val_00000000.jpg" and data.questions[0].answers[0] == "unanswerable"
    assert data.questions[0].question_type is None and read_vqa_dataset(None, path).name == "vizwiz"
    dup = _write(tmp_path, "val_dup.json", json.loads(path.read_text()) * 2)
    with pytest.raises(EvalInputError, match=r"val_dup\.json: image 'VizWiz_val_00000000\.jpg' appears twice"):
        read_vizwiz(dup)


def test_gqa_reader(tmp_path):
    path = _write(tmp_path, "testdev_balanced_questions.json", {
        "20968078": {"imageId": "n288870", "question": "Is the tray on the right?", "answer": "no", "fullAnswer": "No.",
                     "types": {"structural": "verify", "semantic": "rel", "detailed": "relVerify"}},
    })  # fmt: skip
    data = read_gqa(path)
    assert data.metric == "exact_match" and data.questions[0].answers == ("no",)
    assert (data.questions[0].answer_type, data.questions[0].question_type) == ("verify", "relVerify")
    assert read_vqa_dataset(path, None).name == "gqa"


def test_vqa_prediction_formats_and_jsonl(tmp_path):
    listed = _write(tmp_path, "res.json", [{"question_id": 1, "answer": "a"}, {"image": "x.jpg", "answer": "b"},
                                           {"questionId": "07", "prediction": "c"}])  # fmt: skip
    assert list(iter_vqa_predictions(listed)) == [("1", "a"), ("x.jpg", "b"), ("07", "c")]
    lines = _write(tmp_path, "res.jsonl", '{"question_id": 1, "answer": "a"}\n\n{"question_id": 2, "answer": "b"}\n')
    assert list(iter_vqa_predictions(lines)) == [("1", "a"), ("2", "b")]
    broken = _write(tmp_path, "broken.jsonl", '{"question_id": 1, "answer": "a"}\n{"question_id": 2,\n')
    with pytest.raises(EvalInputError, match=r"broken\.jsonl: line 2 is not valid JSON"):
        list(iter_vqa_predictions(broken))
    wrong = _write(tmp_path, "wrong.json", [{"qid": 1, "text": "a"}])
    with pytest.raises(EvalInputError, match=r"wrong\.json: predictions\[0\] must be an object with one of"):
        list(iter_vqa_predictions(wrong))
