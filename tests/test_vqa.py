"""VQA accuracy: normalisation rules, the three variants, the leave-one-out arithmetic, bad input, CLIs."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.datasets import VQADataset, VQAQuestion
from eval.errors import EvalInputError, MissingPredictionsError
from eval.vqa import (
    VARIANTS,
    VQAScorer,
    comparable_forms,
    evaluate_vqa,
    exact_match_score,
    main,
    score_vqa,
    vqa_accuracy,
    vqa_score,
)
from eval.vqa_normalize import load_lemmatizer, normalize_answer, process_digit_article, process_punctuation

# ----- normalisation, one rule at a time (expected values worked out by hand from the official rules) ----


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes.", "yes"),  # period not followed by a digit is removed
        ("2.5", "2.5"),  # period before a digit is kept
        ("t-shirt", "t shirt"),  # punctuation touching no space becomes a space
        ("red, white", "red white"),  # "," touches a space somewhere -> every "," is deleted
        ("1,000", "1000"),  # digit-comma-digit anywhere -> punctuation deleted, not spaced
        ("black/white", "black white"),
        ("(left) side", "left side"),  # ")" touches a space -> deleted; "(" touches none -> space, stripped later
        ("it's", "it's"),  # apostrophe is not punctuation for the official rule
        ("what?", "what"),
        ("a:b", "a:b"),  # colon is not in the current list
    ],
)
def test_punctuation_rule(raw, expected):
    assert " ".join(process_punctuation(raw).split()) == expected


def test_punctuation_period_quirk_caps_at_32_removals():
    # The official call passes re.UNICODE (32) as `count`: the 33rd period survives.
    assert process_punctuation("." * 33 + "x") == ".x"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"), ("none", "0"), ("zero", "0"), ("ten dogs", "10 dogs"), ("eleven", "eleven"),
        ("the red one", "red 1"), ("A Cat", "cat"), ("an apple", "apple"),
        ("dont", "don't"), ("isnt it", "isn't it"), ("Im", "im"),  # "Im" is lower-cased before the lookup
        ("  many   spaces ", "many spaces"),
    ],
)  # fmt: skip
def test_digit_article_rule(raw, expected):
    assert process_digit_article(raw) == expected


def test_full_normalisation_combines_whitespace_punctuation_digits():
    assert normalize_answer("\tThe Two dogs.\n") == "2 dogs"
    assert normalize_answer("Yes!") == "yes"


# ----- variants: hand-checked cases, including the ones where they disagree -----------------------


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        # Unanimous humans: the official evaluator normalises nothing, so capitals/periods fail.
        ("Black.", ["black"] * 10, {"official": 0.0, "official_legacy": 1.0, "normalize_both": 1.0}),
        # Legacy normalises the prediction only: "the cat" -> "cat" can never equal unanimous "the cat".
        ("the cat", ["the cat"] * 10, {"official": 1.0, "official_legacy": 0.0, "normalize_both": 1.0}),
        # Disagreeing humans: official normalises both; legacy leaves number words on the human side.
        ("2", ["two"] * 4 + ["three"] * 6, {"official": 1.0, "official_legacy": 0.0, "normalize_both": 1.0}),
        # All variants agree on an ordinary case: 3 of 10 match after normalisation -> 0.9.
        ("Yes", ["yes"] * 3 + ["no"] * 7, {"official": 0.9, "official_legacy": 0.9, "normalize_both": 0.9}),
        ("A dog", ["dog"] * 2 + ["cat"] * 8, {"official": 0.6, "official_legacy": 0.6, "normalize_both": 0.6}),
        ("blue", ["red"] * 10, {"official": 0.0, "official_legacy": 0.0, "normalize_both": 0.0}),
    ],
)
def test_variants_hand_checked(prediction, answers, expected):
    for variant in VARIANTS:
        assert vqa_accuracy(prediction, answers, variant) == pytest.approx(expected[variant]), variant


def test_default_variant_is_current_official():
    assert vqa_accuracy("Black.", ["black"] * 10) == vqa_accuracy("Black.", ["black"] * 10, "official") == 0.0


def test_official_strips_whitespace_even_when_unanimous():
    assert comparable_forms(" black\n", ["black"] * 10, "official") == ("black", ["black"] * 10)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="official_legacy"):
        vqa_accuracy("x", ["x"], "lmms")


def test_gqa_exact_match_after_normalisation():
    assert exact_match_score("The Table.", "table") == 1
    assert exact_match_score("two", "2") == 1
    assert exact_match_score("tables", "table") == 0


# ----- properties -----------------------------------------------------------------------------------

WORDS = st.sampled_from(["yes", "Yes.", "no", "2", "two", "the cat", "cat", "red", "t-shirt", "t shirt", "none", "0"])
ANSWERS = st.lists(WORDS, min_size=10, max_size=10)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(prediction=WORDS, answers=ANSWERS, variant=st.sampled_from(VARIANTS))
def test_accuracy_in_unit_interval_and_fast_path_identical(prediction, answers, variant):
    exact = vqa_score(prediction, answers, variant)
    assert 0 <= exact <= 1
    num, den = VQAScorer(variant=variant).score_key(prediction, tuple(answers))
    assert Fraction(num, den) == exact


@settings(max_examples=60, deadline=None, derandomize=True)
@given(answers=ANSWERS, variant=st.sampled_from(VARIANTS), data=st.data())
def test_permuting_answers_changes_nothing(answers, variant, data):
    prediction = data.draw(WORDS)
    permuted = data.draw(st.permutations(answers))
    assert vqa_score(prediction, answers, variant) == vqa_score(prediction, permuted, variant)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(k=st.integers(0, 10), variant=st.sampled_from(VARIANTS), data=st.data())
def test_match_count_arithmetic(k, variant, data):
    # Distinct, already-normalised strings so "matches" means the same under every variant.
    answers = ["cat"] * k + [f"dog{i}" for i in range(10 - k)]
    answers = data.draw(st.permutations(answers))
    score = vqa_score("cat", answers, variant)
    if k >= 4:
        assert score == 1
    elif k == 3:
        # 3 subsets drop a match (2 left -> 2/3), 7 keep all 3 (-> 1): (7 + 3 * 2/3) / 10 = 0.9
        assert score == Fraction(9, 10)
    else:
        # below the cap: k subsets see k-1 matches, 10-k see k: (k(k-1) + (10-k)k) / 30 = 3k/10
        assert score == Fraction(3 * k, 10)


# ----- datasets in memory: breakdowns, missing predictions, bad input ---------------------------------


def _official(questions):
    """Official-format questions/annotations objects from (qid, answers, answer_type, question_type)."""
    qs = {"questions": [{"question_id": q, "image_id": 1, "question": "?"} for q, *_ in questions]}
    anns = {
        "annotations": [
            {"question_id": q, "image_id": 1, "answer_type": at, "question_type": qt,
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)]}
            for q, ans, at, qt in questions
        ]
    }  # fmt: skip
    return qs, anns


QUESTIONS = [
    (1, ["yes"] * 10, "yes/no", "is the"),
    (2, ["2"] * 3 + ["3"] * 7, "number", "how many"),
    (3, ["red"] * 5 + ["blue"] * 5, "other", "what color is the"),
    (4, ["no"] * 9 + ["yes"], "yes/no", "is the"),
]


def test_evaluate_vqa_breakdown_and_missing_counted():
    qs, anns = _official(QUESTIONS)
    preds = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"}, {"question_id": 3, "answer": "green"}]
    result = evaluate_vqa(qs, anns, preds, "official")
    # per question: 1.0, 0.9, 0.0, missing -> 0; the denominator stays 4.
    assert result.accuracy == pytest.approx(100 * 1.9 / 4)
    assert result.per_answer_type["yes/no"] == {"accuracy": pytest.approx(50.0), "count": 2}
    assert result.per_answer_type["number"]["accuracy"] == pytest.approx(90.0)
    assert result.per_question_type["what color is the"]["accuracy"] == 0.0
    assert (result.n_questions, result.n_scored, result.n_missing, result.missing_examples) == (4, 3, 1, ["4"])
    assert result.variant == "official" and result.lemmatizer["active"] == "off"
    row = result.to_frame().iloc[0]
    assert row["variant"] == "official" and row["n_missing"] == 1 and row["acc/number"] == pytest.approx(90.0)


def test_strict_refuses_missing():
    qs, anns = _official(QUESTIONS)
    with pytest.raises(MissingPredictionsError, match=r"1 of 4 .*'4'"):
        evaluate_vqa(qs, anns, [{"question_id": q, "answer": "x"} for q in (1, 2, 3)], strict=True)


def test_unknown_duplicate_and_empty_predictions_are_errors():
    qs, anns = _official(QUESTIONS)
    with pytest.raises(EvalInputError, match=r"question id 99"):
        evaluate_vqa(qs, anns, [{"question_id": 99, "answer": "x"}])
    with pytest.raises(EvalInputError, match=r"question id 2 has more than one"):
        evaluate_vqa(qs, anns, [{"question_id": 2, "answer": "x"}, {"question_id": 2, "answer": "y"}])
    with pytest.raises(EvalInputError, match="empty"):
        evaluate_vqa(qs, anns, [])


def test_lemmatizer_is_pluggable_and_recorded():
    from eval.vqa_normalize import LemmatizerChoice

    dataset = VQADataset("okvqa", "vqa_accuracy", [VQAQuestion("1", ("dog",) * 10, "other", "eight")], [])
    plain = score_vqa(dataset, {"1": "dogs"})
    singular = LemmatizerChoice("custom", "test:strip-s", "", lambda s: s.rstrip("s"))
    lemmatized = score_vqa(dataset, {"1": "dogs"}, lemmatizer=singular)
    assert (plain.accuracy, lemmatized.accuracy) == (0.0, 100.0)
    assert lemmatized.lemmatizer == {"requested": "custom", "active": "test:strip-s", "reason": ""}


def test_spacy_lemmatizer_falls_back_to_off_with_a_reason():
    choice = load_lemmatizer("spacy")
    try:
        import spacy  # noqa: F401
    except ImportError:
        assert choice.active == "off" and choice.fn is None and "not installed" in choice.reason
    else:
        assert choice.active.startswith("spacy:") or "model" in choice.reason


# ----- command line ----------------------------------------------------------------------------------


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_cli_json_table_and_errors(tmp_path, capsys):
    qs, anns = _official(QUESTIONS)
    q = _write(tmp_path, "v2_OpenEnded_mscoco_val2014_questions.json", qs)
    a = _write(tmp_path, "v2_mscoco_val2014_annotations.json", anns)
    p = _write(tmp_path, "results.json", [{"question_id": 1, "answer": "Yes."}, {"question_id": 2, "answer": "two"}])
    base = ["--questions", q, "--annotations", a, "--predictions", p]

    assert main(base + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["variant"] == "official" and out["n_missing"] == 2 and out["n_questions"] == 4
    assert out["accuracy"] == pytest.approx(100 * (0.0 + 0.9) / 4)  # unanimous "yes" vs "Yes." -> 0 officially
    assert "git" in out["provenance"]

    assert main(base + ["--json", "--variant", "normalize_both"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(100 * (1.0 + 0.9) / 4)

    assert main(base) == 0
    table = capsys.readouterr().out
    assert "variant=official" in table and "missing predictions (scored 0): 2" in table and "how many" in table

    assert main(base + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "2 of 4" in err and "'3', '4'" in err

    bad = _write(tmp_path, "bad.json", [{"question_id": 12345, "answer": "x"}])
    assert main(["--questions", q, "--annotations", a, "--predictions", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "12345" in err

    (tmp_path / "broken.json").write_text('[{"question_id": 1, "answer": "x"')
    assert main(["--questions", q, "--annotations", a, "--predictions", str(tmp_path / "broken.json")]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_cli_vizwiz_and_gqa(tmp_path, capsys):
    vizwiz = [
        {"image": "VizWiz_val_00000000.jpg", "question": "?", "answer_type": "unanswerable", "answerable": 0,
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
        {"image": "VizWiz_val_00000001.jpg", "question": "?", "answer_type": "other", "answerable": 1,
         "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 4 + [{"answer": "can", "answer_confidence": "maybe"}] * 6},
    ]  # fmt: skip
    a = _write(tmp_path, "val.json", vizwiz)
    p = _write(tmp_path, "vizwiz_results.json", [{"image": "VizWiz_val_00000000.jpg", "answer": "unanswerable"},
                                                 {"image": "VizWiz_val_00000001.jpg", "answer": "can"}])  # fmt: skip
    assert main(["--annotations", a, "--predictions", p, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "vizwiz" and out["accuracy"] == 100.0
    assert set(out["per_answer_type"]) == {"unanswerable", "other"}

    gqa = {
        "201": {"imageId": "n1", "question": "?", "answer": "table", "types": {"structural": "query", "detailed": "relS"}},
        "202": {"imageId": "n2", "question": "?", "answer": "yes", "types": {"structural": "verify", "detailed": "existC"}},
    }
    q = _write(tmp_path, "testdev_balanced_questions.json", gqa)
    p = _write(tmp_path, "gqa_results.json", [{"questionId": "201", "prediction": "The table."}, {"questionId": "202", "prediction": "no"}])
    assert main(["--questions", q, "--predictions", p, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dataset"], out["metric"], out["variant"]) == ("gqa", "exact_match", "exact_match")
    assert out["accuracy"] == 50.0 and out["per_answer_type"]["query"]["accuracy"] == 100.0
