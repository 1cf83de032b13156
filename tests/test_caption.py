"""Caption metrics against pycocoevalcap's own scorers on the real CLIPScore example (needs Java).

Java start-ups are the cost here (METEOR loads its paraphrase table: 5-20 s on a busy 2-core machine),
so one METEOR process serves the whole module: our code scores every prediction set with one tokenizer
call, the reference numbers are computed directly with pycocoevalcap's classes with another, and the
CLI test reuses the same METEOR process (through `start_meteor`) with a third tokenizer call.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import eval.caption as caption_module
from eval.caption import CAPTION_METRICS, cider_by_domain, main, ptb_tokenize, score_caption_sets, score_captions, spice_status
from eval.errors import EvalInputError, MissingPredictionsError

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "caption_example"
if not EXAMPLE.is_dir():  # CI clones main with shared/ beside it; a developer checkout may sit elsewhere
    EXAMPLE = Path("/work/shared/data/caption_example")

# Published with the example (CLIPScore README, rounded to 4 decimals); SPICE is not computable here.
PUBLISHED = {
    "good": {"BLEU-1": 0.6667, "BLEU-2": 0.4899, "BLEU-3": 0.3469, "BLEU-4": 0.0000, "METEOR": 0.3444, "ROUGE-L": 0.4280, "CIDEr": 0.5637},
    "bad": {"BLEU-1": 0.4815, "BLEU-2": 0.2404, "BLEU-3": 0.1359, "BLEU-4": 0.0000, "METEOR": 0.1861, "ROUGE-L": 0.3121, "CIDEr": 0.2790},
}  # fmt: skip
DOMAINS = {"image1": "in-domain", "image2": "out-domain"}


def _load(name: str):
    return json.loads((EXAMPLE / name).read_text())


@pytest.fixture(scope="module")
def example():
    return {"refs": _load("refs.json"), "good": _load("good_captions.json"), "bad": _load("bad_captions.json")}


@pytest.fixture(scope="module")
def meteor():
    """pycocoevalcap's Meteor, started once for the module and stopped at its end."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    yield scorer
    scorer.meteor_p.stdin.close()
    scorer.meteor_p.kill()
    scorer.meteor_p.wait()


@pytest.fixture(scope="module")
def ours(example, meteor):
    sets = {"good": example["good"], "bad": example["bad"], "partial": {"image1": example["good"]["image1"]}}
    return score_caption_sets(example["refs"], sets, domains=DOMAINS, meteor=meteor)


@pytest.fixture(scope="module")
def direct(example, meteor):
    """The same numbers computed with pycocoevalcap's classes only (nothing of ours)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = list(example["refs"])
    raw = {("ref", i): [{"caption": c} for c in example["refs"][i]] for i in ids}
    for name in ("good", "bad"):
        raw.update({(name, i): [{"caption": example[name][i]}] for i in ids})
    tok = PTBTokenizer().tokenize(raw)
    gts = {i: tok[("ref", i)] for i in ids}
    out = {}
    for name in ("good", "bad"):
        res = {i: tok[(name, i)] for i in ids}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, cider_per_image = Cider().compute_score(gts, res)
        out[name] = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
        out[name]["METEOR"] = meteor.compute_score(gts, res)[0]
        out[name]["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
        out[name]["CIDEr"] = cider
        out[name]["cider_per_image"] = dict(zip(ids, cider_per_image))
        out[name]["cider_by_domain"] = {
            DOMAINS[i]: Cider().compute_score({i: gts[i]}, {i: res[i]})[0] for i in ids
        }
    return out


@pytest.mark.parametrize("name", ["good", "bad"])
def test_matches_pycocoevalcap_scorers(ours, direct, name):
    for metric in CAPTION_METRICS:
        assert ours[name].metrics[metric] == pytest.approx(direct[name][metric], rel=1e-12, abs=1e-15), metric


@pytest.mark.parametrize("name", ["good", "bad"])
def test_matches_published_numbers(ours, name):
    for metric, value in PUBLISHED[name].items():
        assert abs(ours[name].metrics[metric] - value) <= 5e-5, (metric, ours[name].metrics[metric], value)


def test_good_beats_bad(ours):
    assert ours["good"].metrics["CIDEr"] > ours["bad"].metrics["CIDEr"]
    assert all(ours["good"].metrics[m] >= ours["bad"].metrics[m] for m in CAPTION_METRICS)


def test_spice_reported_unavailable_not_zero(ours):
    available, reason = spice_status()
    spice = ours["good"].spice
    assert spice["available"] == available
    if not available:
        assert spice["value"] is None and "stanford-corenlp-3.6.0" in spice["reason"]
        assert ours["good"].to_row()["SPICE"] is None


def test_nocaps_domains_scored_as_separate_corpora(ours, direct):
    for name in ("good", "bad"):
        per_domain = ours[name].per_domain
        assert set(per_domain) == {"in-domain", "out-domain"}
        for domain, value in direct[name]["cider_by_domain"].items():
            assert per_domain[domain]["CIDEr"] == pytest.approx(value, rel=1e-12)
            assert per_domain[domain]["count"] == 1


def test_missing_prediction_scores_zero_and_is_counted(ours, direct):
    partial = ours["partial"]
    assert (partial.n_images, partial.n_scored, partial.n_missing) == (2, 1, 1)
    assert partial.missing_examples == ["image2"]
    # CIDEr is a per-image mean: the missing image contributes 0 to a denominator of 2, not a smaller one.
    assert partial.metrics["CIDEr"] == pytest.approx(direct["good"]["cider_per_image"]["image1"] / 2, rel=1e-12)
    assert partial.metrics["CIDEr"] < ours["good"].metrics["CIDEr"]


def test_result_row_and_frame(ours):
    frame = ours["good"].to_frame()
    assert list(frame.columns[:7]) == list(CAPTION_METRICS)
    assert frame.loc[0, "n_missing"] == 0 and frame.loc[0, "CIDEr"] == ours["good"].metrics["CIDEr"]
    assert "CIDEr/in-domain" in frame.columns


def test_cider_by_domain_uses_each_domain_as_its_own_corpus():
    """Pure Python (no Java): per-domain CIDEr differs from slicing the overall per-image scores."""
    from pycocoevalcap.cider.cider import Cider

    gts = {
        "a": ["a dog runs on grass", "a brown dog running"], "b": ["a dog sleeps on a bed", "the dog is asleep"],
        "c": ["a cat on a sofa", "a grey cat sitting"], "d": ["two birds on a wire", "birds sitting on a line"],
        "e": ["a bird flies over water", "a seagull in flight"], "f": ["a cat chases a bird", "the cat and the bird"],
    }  # fmt: skip
    res = {"a": ["a dog running on grass"], "b": ["a dog on a bed"], "c": ["a cat on a couch"],
           "d": ["birds on a wire"], "e": ["a bird over the sea"], "f": ["a cat and a bird"]}  # fmt: skip
    domains = {"a": "in-domain", "b": "in-domain", "c": "in-domain", "d": "out-domain", "e": "out-domain", "f": "out-domain"}
    out = cider_by_domain(gts, res, domains)
    _, per_image = Cider().compute_score(gts, res)
    for domain, ids in (("in-domain", "abc"), ("out-domain", "def")):
        expected, _ = Cider().compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
        assert out[domain] == {"CIDEr": pytest.approx(expected, rel=1e-12), "count": 3}
        assert out[domain]["CIDEr"] > 0
        sliced = sum(per_image[ord(i) - ord("a")] for i in ids) / 3
        assert out[domain]["CIDEr"] != pytest.approx(sliced, rel=1e-6)  # document frequencies differ


def test_line_separators_inside_a_caption_do_not_shift_later_captions():
    # pycocoevalcap's tokenizer maps output lines to captions by position: a raw "\r" would move "two"
    # onto image b and drop "three". Captions are collapsed to one line first.
    out = ptb_tokenize({"a": ["One\rtwo.", "x\u2028y"], "b": ["Three!"], "c": [""]})
    assert out == {"a": ["one two", "x y"], "b": ["three"], "c": [""]}


# ----- bad input: rejected before any Java starts -----------------------------------------------


def test_unknown_image_id_is_an_error_naming_file_and_id(example):
    preds = dict(example["good"], image9="a cat")
    with pytest.raises(EvalInputError, match=r"preds\.json.*'image9'"):
        score_captions(example["refs"], preds, predictions_source="preds.json")


def test_empty_prediction_set_is_an_error(example):
    with pytest.raises(EvalInputError, match="empty"):
        score_captions(example["refs"], {}, predictions_source="preds.json")


def test_strict_refuses_missing_predictions(example):
    with pytest.raises(MissingPredictionsError, match=r"1 of 2 .*'image2'"):
        score_captions(example["refs"], {"image1": "a cat"}, strict=True, predictions_source="preds.json")


def test_non_string_caption_is_an_error(example):
    with pytest.raises(EvalInputError, match="image1"):
        score_captions(example["refs"], {"image1": 3, "image2": "a dog"})


# ----- command line -------------------------------------------------------------------------------


def _write_nocaps(tmp_path: Path, example) -> Path:
    """The example as a NoCaps-style COCO file with integer image ids."""
    ids = {"image1": 1, "image2": 2}
    images = [{"id": ids[k], "file_name": f"{k}.jpg", "domain": DOMAINS[k]} for k in ids]
    anns = [{"image_id": ids[k], "id": n, "caption": c} for n, (k, c) in enumerate((k, c) for k in ids for c in example["refs"][k])]
    path = tmp_path / "nocaps_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def test_cli_json_and_bad_input(tmp_path, capsys, monkeypatch, example, ours, meteor):
    monkeypatch.setattr(caption_module, "start_meteor", lambda: meteor)  # reuse the module's METEOR process
    gt = _write_nocaps(tmp_path, example)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": 1, "caption": example["good"]["image1"]}, {"image_id": 2, "caption": example["good"]["image2"]}]))
    assert main(["--annotations", str(gt), "--predictions", str(preds), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for metric in CAPTION_METRICS:
        assert math.isclose(out["metrics"][metric], ours["good"].metrics[metric], rel_tol=1e-12)
    assert out["n_missing"] == 0 and out["n_images"] == 2 and set(out["per_domain"]) == set(DOMAINS.values())
    assert out["spice"]["available"] is False or out["spice"]["value"] is not None
    assert "git" in out["provenance"] and out["versions"]["pycocoevalcap"]

    preds.write_text(json.dumps([{"image_id": 7, "caption": "a cat"}]))
    assert main(["--annotations", str(gt), "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err
    assert str(preds) in err and "7" in err
