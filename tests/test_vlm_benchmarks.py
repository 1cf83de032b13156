"""VILA Table 5 benchmarks (eval/vlm_benchmarks.py, eval/judge.py) and BBH / DROP (eval/text_benchmarks.py).

Each scorer gets a tiny hand-made case in its official format whose value is worked out by hand in the test;
then the tasks run end to end on the official-layout fixtures with the colour-reading stand-in model.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import fixtures_official as F
from eval import judge as J
from eval import text_benchmarks as TB
from eval import vlm_benchmarks as B
from eval.errors import EvalInputError
from eval.evaluate import evaluate_tasks, prepare_tasks
from eval.tasks import get_task

# ----- multiple choice ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, expected",
    [("B", "B"), ("B.", "B"), ("(B) green", "B"), ("B: green", "B"), (" C ", "C"), ("c", None), ("Green.", "B"), ("green", "B"),
     ("D", None), ("Blue is it", None), ("", None), ("Because", None)],
)  # fmt: skip
def test_parse_choice(prediction, expected):
    assert B.parse_choice(prediction, ["red", "green", "blue"]) == expected


def test_choice_accuracy_and_per_dimension_by_hand():
    refs = {"1/a": ["A", "x", "y"], "1/b": ["B", "x", "y"], "2/c": ["A", "x", "y"], "2/d": ["B", "x", "y"]}
    preds = {"1/a": "A", "1/b": "y", "2/c": "B"}  # right, right (by option text), wrong, missing
    assert B.choice_accuracy(refs, preds, "") == {"accuracy": 50.0, "accuracy/1": 100.0, "accuracy/2": 0.0}


def test_mmbench_circular_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("EVAL_EXTRACT_DIR", str(tmp_path / "x"))
    F.write_mmbench(tmp_path)
    samples, root = get_task("mmbench_dev").read(tmp_path)
    # question 0 (answer A = red) in its 3 shifts: red, green, blue / green, blue, red / blue, red, green
    first = [s for s in samples if s.id.startswith("0#")]
    assert [s.references[0] for s in first] == ["A", "C", "B"]
    assert first[1].text.endswith("A. green\nB. blue\nC. red") and first[0].text.startswith("A plain picture.\n")
    assert (root / first[0].image).is_file()
    refs = {s.id: list(s.references) for s in samples}
    # question 1 (answer B = blue; options green, blue, yellow) is B, A, C in its shifts; question 2 (A) is A, C, B
    assert [refs[f"1#{k}"][0] for k in range(3)] == ["B", "A", "C"] and [refs[f"2#{k}"][0] for k in range(3)] == ["A", "C", "B"]
    # question 0: every shift right; question 1: unshifted wrong, the others right; question 2: only unshifted right
    preds = {"0#0": "A", "0#1": "C", "0#2": "B", "1#0": "C", "1#1": "A", "1#2": "C", "2#0": "A", "2#1": "A"}  # 2#2 missing
    values = B.circular_accuracy(refs, preds, "")
    assert values["circular_accuracy"] == pytest.approx(100 / 3)  # question 0 alone
    assert values["accuracy/single_pass"] == pytest.approx(100 * 2 / 3)  # 0#0 and 2#0


# ----- POPE ------------------------------------------------------------------------------------------------------


def test_pope_answer_reading():
    assert [B.pope_answer(p) for p in ("Yes", "No", "No, there is not.", "There is not a cat.", "Yes. No.", "maybe")] == [
        "yes", "no", "no", "no", "yes", "yes"]  # fmt: skip


def test_pope_scores_by_hand():
    # labels yes yes yes no; answers yes yes no yes: TP 2, FN 1, FP 1, TN 0
    values = B.pope_scores([("yes", "Yes"), ("yes", "yes"), ("yes", "No"), ("no", "Yes")])
    precision, recall = 2 / 3, 2 / 3
    assert values["precision"] == pytest.approx(100 * precision)
    assert values["recall"] == pytest.approx(100 * recall)
    assert values["F1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert values["accuracy"] == pytest.approx(50.0) and values["yes_ratio"] == pytest.approx(75.0)
    # the task's headline is F1 averaged over the splits
    refs = {"random/1": ["yes"], "random/2": ["no"], "popular/1": ["yes"], "popular/2": ["no"]}
    preds = {"random/1": "yes", "random/2": "no", "popular/1": "yes", "popular/2": "yes"}  # F1 1.0 and 2/3
    values = B.pope_metric(refs, preds, "")
    assert values["F1/random"] == 100.0 and values["F1/popular"] == pytest.approx(200 / 3)
    assert values["F1"] == pytest.approx((100 + 200 / 3) / 2)


# ----- MME -------------------------------------------------------------------------------------------------------


def test_mme_reading_and_scores_by_hand():
    assert [B.mme_answer(p) for p in ("Yes", "no.", "Yes, it is", "No, it is not", "Not sure", "Maybe")] == [
        "yes", "no", "yes", "no", "no", "other"]  # fmt: skip
    records = [  # existence: image a both right, image b one right; OCR: one image, one right; code_reasoning: both
        ("existence", "a", "Yes", "Yes"), ("existence", "a", "No", "No"),
        ("existence", "b", "Yes", "Yes"), ("existence", "b", "No", "Yes"),
        ("OCR", "c", "Yes", "yes"), ("OCR", "c", "No", None),
        ("code_reasoning", "d", "Yes", "Yes"), ("code_reasoning", "d", "No", "no"),
    ]  # fmt: skip
    values = B.mme_scores(records)
    assert values["acc/existence"] == 75.0 and values["acc+/existence"] == 50.0 and values["score/existence"] == 125.0
    assert values["acc/OCR"] == 50.0 and values["acc+/OCR"] == 0.0
    assert values["perception"] == 125.0 + 50.0  # existence + OCR
    assert values["cognition"] == 200.0  # code_reasoning: acc 100 + acc+ 100


def test_mme_reader_both_layouts(tmp_path):
    F.write_mme(tmp_path)
    samples, root = get_task("mme").read(tmp_path)
    assert [s.id for s in samples[:2]] == ["artwork/10002.jpg#0", "artwork/10002.jpg#1"]
    assert samples[0].image == "artwork/images/10002.jpg" and samples[0].references == ("Yes",)
    assert samples[2].image == "existence/000000.jpg" and (root / samples[2].image).is_file()
    (tmp_path / "mme/MME_Benchmark_release_version/existence/000001.txt").write_text("Is it?\tMaybe\n")
    with pytest.raises(EvalInputError, match=r"000001.txt: line 1 must be 'question<TAB>Yes\|No'"):
        get_task("mme").read(tmp_path)


# ----- end to end on the fixtures (stand-in model: answers the colour it sees) -----------------------------------


def test_table5_tasks_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("EVAL_EXTRACT_DIR", str(tmp_path / "x"))
    names = ["scienceqa_img", "seed_bench_img", "mmbench_dev", "pope", "mme", "textvqa_val", "llava_bench", "mm_vet"]
    for name in names:
        F.WRITERS[name](tmp_path / "data")
    (tmp_path / "ckpt").mkdir()
    frame = evaluate_tasks(",".join(names), F.register_standin_family(), tmp_path / "ckpt", tmp_path / "data",
                           tmp_path / "out", progress=False)  # fmt: skip
    value = {(r.task, r.metric): r.value for r in frame.itertuples()}
    assert value["scienceqa_img", "accuracy"] == 50.0  # the image's colour is right at even positions
    assert value["seed_bench_img", "accuracy/1"] == 100.0 and value["seed_bench_img", "accuracy/2"] == 0.0
    assert value["mmbench_dev", "circular_accuracy"] == pytest.approx(200 / 3)  # questions 0 and 2 in every shift
    assert value["textvqa_val", "vqa_accuracy"] == 50.0
    assert value["pope", "F1"] == pytest.approx(200 / 3)  # a colour name reads as "yes": P 1/2, R 1
    assert value["mme", "perception"] == 0.0  # a colour name is neither yes nor no
    for name in ("llava_bench", "mm_vet"):  # GPT-4-judged: no judge, no score
        (row,) = json.loads((tmp_path / "out" / name / "results.json").read_text())
        assert row["metric"] == "needs_judge" and row["value"] is None and row["status"].startswith("needs a judge")
        assert pd.isna(frame[frame["task"] == name]["value"]).all()
    # with a judge: the cached predictions are scored, nothing is recomputed
    frame = evaluate_tasks("llava_bench,mm_vet", F.register_standin_family(), tmp_path / "ckpt", tmp_path / "data",
                           tmp_path / "out", progress=False, judge=ColourJudge())  # fmt: skip
    value = {(r.task, r.metric): r.value for r in frame.itertuples()}
    assert value["mm_vet", "score"] == pytest.approx(100.0) and value["mm_vet", "score/ocr"] == pytest.approx(100.0)
    assert value["llava_bench", "relative_score"] == pytest.approx(100 * 3 * 5 / (3 * 10))
    assert value["llava_bench", "relative_score/conv"] == pytest.approx(50.0)


class ColourJudge:
    """Grades an answer 1 when it names the reference's colour (MM-Vet); rates reference 10, answer 5 (LLaVA-Bench)."""

    model_id = "colour-judge"

    def rate(self, benchmark, requests):
        if benchmark == "llava_bench":
            return [(10.0, 5.0) for _ in requests]
        return [float(r.prediction.strip() in r.reference) for r in requests]


def test_judge_arithmetic_by_hand():
    values = J.llava_bench_scores([(8, 6), (10, 9), (6, 6)], ["conv", "detail", "conv"])
    assert values["relative_score"] == pytest.approx(100 * 21 / 24)
    assert values["relative_score/conv"] == pytest.approx(100 * 12 / 14)
    values = J.mm_vet_scores([1.0, 0.5, 0.0], [("rec",), ("rec", "ocr"), ("ocr",)])
    assert values == {"score": pytest.approx(50.0), "score/ocr": pytest.approx(25.0), "score/rec": pytest.approx(75.0)}
    with pytest.raises(J.NeedsJudgeError, match="needs|judge"):
        J.judged_metric("mm_vet", None)({"a": ["x", "q", "rec"]}, {"a": "x"}, "")
    assert isinstance(ColourJudge(), J.Judge)


# ----- BBH and DROP through lm-eval ------------------------------------------------------------------------------


class AnswerLM:
    """An lm-eval LM whose every continuation is `answer`; keeps the contexts it was given."""

    def __new__(cls, answer: str):
        from lm_eval.api.model import LM

        class _LM(LM):
            def __init__(self):
                super().__init__()
                self.contexts = []

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                self.contexts += [r.args[0] for r in requests]
                return [answer for _ in requests]

        return _LM()


def test_bbh_three_shot_exact_match(tmp_path):
    F.write_bbh(tmp_path)
    description, shots = TB.read_bbh_prompt(tmp_path / "bbh/cot-prompts/boolean_expressions.txt")
    assert description == "Evaluate the boolean_expressions."
    assert shots[0] == {"input": "boolean_expressions exemplar 0", "target": "False"} and len(shots) == 3
    lm = AnswerLM(" True")
    values, counts = TB.evaluate(lm, "bbh", tmp_path)
    assert values == {"accuracy": 50.0, "accuracy/boolean_expressions": 50.0, "accuracy/sports_understanding": 50.0}
    assert counts["accuracy"] == 8
    context = lm.contexts[0]
    assert context.startswith("Evaluate the ") and context.count("Q: ") == 4 and context.endswith("\nA:")
    assert "A: False\n\nQ: " in context  # answer-only exemplars


def test_drop_three_shot_f1(tmp_path):
    F.write_drop(tmp_path)
    lm = AnswerLM(" the Bears")
    values, counts = TB.evaluate(lm, "drop", tmp_path)
    assert values["em"] == pytest.approx(50.0) and values["f1"] == pytest.approx(50.0)  # the span questions only
    assert counts["f1"] == 6
    assert all(c.count("Passage ") == 4 for c in lm.contexts)  # 3 demonstrations from train, then the question


def test_bbh_drop_missing_files_are_named(tmp_path):
    F.write_bbh(tmp_path)
    (tmp_path / "bbh/cot-prompts/sports_understanding.txt").unlink()
    with pytest.raises(EvalInputError, match="sports_understanding has no prompt file bbh/cot-prompts/sports_understanding.txt"):
        prepare_tasks([get_task("bbh")], tmp_path)
    with pytest.raises(Exception, match="task drop expects drop/drop_dataset_dev.json"):
        prepare_tasks([get_task("drop")], tmp_path)


def test_bbh_through_evaluate_tasks_rows(tmp_path):
    from model.families import LoadedModel

    F.write_bbh(tmp_path / "data")
    loaded = LoadedModel(model_id="answers-true", adapter=None, llm=AnswerLM(" True"), config={"kind": "fake"},
                         source="released")  # fmt: skip
    frame = evaluate_tasks("bbh", "fake", None, tmp_path / "data", tmp_path / "out", loaded=loaded)
    rows = {r["metric"]: r for r in json.loads((tmp_path / "out/bbh/results.json").read_text())}
    assert rows["accuracy"]["value"] == 50.0 and rows["accuracy"]["headline"] and rows["accuracy"]["n_denominator"] == 8
    assert rows["accuracy/boolean_expressions"]["n_denominator"] == 4 and len(frame) == 3
