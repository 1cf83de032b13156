"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr through pycocoevalcap and its PTB tokenizer.

Scores are pycocoevalcap's own scorers (`Bleu(4)`, `Meteor`, `Rouge`, `Cider`) on captions tokenised by
its `PTBTokenizer` (Stanford CoreNLP 3.4.1, Java), i.e. the numbers of the COCO caption evaluation
server. Values are on pycocoevalcap's scale (CIDEr 1.0 = the papers' 100). Two things are added:

- Java starts as rarely as possible: references and every prediction set go through the tokenizer in one
  call, and one METEOR process scores every prediction set (`score_caption_sets`).
- Input hygiene. The tokenizer maps its output lines back to captions by position, so a caption with a
  carriage return or another line separator would silently shift every later caption onto the wrong
  image; captions are therefore collapsed to single-spaced lines first, and the line count is checked.

SPICE needs Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use; without them (no
network here) SPICE is reported as unavailable with the reason, never as 0 (`spice_status`).

NoCaps: CIDEr is reported overall and per domain (in-/near-/out-domain), each domain scored as its own
corpus, as the NoCaps evaluation does (CIDEr's document frequencies come from the scored references).

Missing predictions (images with references but no caption) are scored as the empty caption, i.e. 0 on
every per-image metric, with the missing image's references still counted in corpus BLEU, and counted in
``n_missing``; ``--strict`` refuses instead. Predictions for unknown images, duplicate predictions and
empty prediction sets are errors naming the file and the image id.

Usage:
    python -m eval.caption --annotations GT.json --predictions PRED.json [--split test] [--strict] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping

from eval.errors import EvalInputError, MissingPredictionsError

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# Bumped whenever a change here can change a score; recorded with every result.
METRIC_VERSION = 1


def _one_line(text: str) -> str:
    """Collapse all whitespace, line separators included (str.split knows \\r, \\x0b, \\u2028, ...)."""
    return " ".join(text.split())


def ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's PTB tokenisation (lower-cased, punctuation dropped) of {key: [captions]}, one Java call."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    payload = {key: [{"caption": _one_line(c)} for c in caps] for key, caps in captions.items()}
    tokenized = PTBTokenizer().tokenize(payload)
    for key, caps in captions.items():
        got = len(tokenized.get(key, []))
        if got != len(caps):  # the tokenizer realigns by line count; a mismatch means misassigned captions
            raise RuntimeError(f"PTB tokenizer returned {got} lines for {key!r}, expected {len(caps)}")
    return tokenized


def spice_status() -> tuple[bool, str]:
    """Whether SPICE can run here, and why not: its Stanford CoreNLP jars are a separate download."""
    try:
        import pycocoevalcap.spice.spice as spice_module
    except ImportError as err:
        return False, f"pycocoevalcap.spice cannot be imported: {err}"
    lib = Path(spice_module.__file__).resolve().parent / "lib"
    needed = ["stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"]
    absent = [name for name in needed if not (lib / name).is_file()]
    if absent:
        return False, (
            f"SPICE needs {', '.join(absent)} in {lib}, which pycocoevalcap downloads from nlp.stanford.edu on first use; "
            "this machine has no network access. Place the jars there to enable SPICE."
        )
    return True, ""


def start_meteor():
    """A running pycocoevalcap METEOR (a Java process; starting it loads the paraphrase table, seconds)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def cider_by_domain(gts: Mapping[str, list[str]], res: Mapping[str, list[str]], domains: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """CIDEr of each domain's images scored as their own corpus (NoCaps protocol), on tokenised captions."""
    from pycocoevalcap.cider.cider import Cider

    out: dict[str, dict[str, float]] = {}
    for domain in sorted(set(domains.values())):
        ids = [i for i in gts if domains[i] == domain]
        score, _ = Cider().compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
        out[domain] = {"CIDEr": float(score), "count": len(ids)}
    return out


def _pycocoevalcap_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pycocoevalcap")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class CaptionResult:
    """One prediction set scored against one reference set."""

    metrics: dict[str, float]  # BLEU-1..4, METEOR, ROUGE-L, CIDEr on pycocoevalcap's scale (CIDEr 1.0 = 100 in papers)
    spice: dict[str, Any]  # {"available": bool, "reason": str, "value": float | None}
    per_domain: dict[str, dict[str, float]]  # NoCaps: domain -> {"CIDEr": value, "count": images}; else {}
    n_images: int  # the denominator: every image with references
    n_scored: int  # images that had a prediction
    n_missing: int  # images without a prediction (scored as the empty caption)
    missing_examples: list[str]  # up to 10 image ids without a prediction
    tokenizer: str  # what tokenised the captions
    sources: list[str]  # reference and prediction files
    versions: dict[str, str]  # pycocoevalcap version, metric version
    provenance: dict[str, str] = field(default_factory=dict)  # code revision and library versions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = dict(self.metrics)
        row["SPICE"] = self.spice["value"] if self.spice["available"] else None
        row.update({f"CIDEr/{d}": v["CIDEr"] for d, v in self.per_domain.items()})
        row.update({"n_images": self.n_images, "n_scored": self.n_scored, "n_missing": self.n_missing})
        return row

    def to_frame(self):
        """A one-row pandas DataFrame of `to_row()` (pandas imported here, on demand)."""
        import pandas as pd

        return pd.DataFrame([self.to_row()])


def _check_predictions(refs: Mapping[str, list[str]], preds: Mapping[str, str], where: str, strict: bool) -> list[str]:
    if not preds:
        raise EvalInputError("the prediction set is empty", where)
    for image_id, caption in preds.items():
        if image_id not in refs:
            raise EvalInputError(f"prediction for image id {image_id!r}, which has no reference captions", where, image_id)
        if not isinstance(caption, str):
            raise EvalInputError(f"the caption of image id {image_id!r} must be a string, got {caption!r}", where, image_id)
    for image_id, captions in refs.items():
        if not captions:
            raise EvalInputError(f"image id {image_id!r} has no reference captions", None, image_id)
    missing = [image_id for image_id in refs if image_id not in preds]
    if strict and missing:
        raise MissingPredictionsError(where, missing[:10], len(missing), len(refs))
    return missing


def score_caption_sets(
    refs: Mapping[Any, list[str]],
    prediction_sets: Mapping[str, Mapping[Any, str]],
    *,
    domains: Mapping[Any, str] | None = None,
    strict: bool = False,
    sources: Mapping[str, str] | None = None,
    reference_source: str | None = None,
    meteor: Any = None,
) -> dict[str, CaptionResult]:
    """Score several prediction sets against the same references with one tokenizer and one METEOR run.

    refs: {image id: [reference captions]}; prediction_sets: {set name: {image id: caption}}. Ids are
    compared by their string form. `sources` maps a set name to its file (named in errors and results).
    `meteor`: a running `start_meteor()` to reuse across calls; by default one is started and stopped here.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    sources = dict(sources or {})
    refs = {str(k): list(v) for k, v in refs.items()}
    domains = {str(k): v for k, v in domains.items()} if domains else None
    if domains is not None and set(domains) != set(refs):
        odd = next(iter(set(domains) ^ set(refs)))
        raise EvalInputError(f"domains and references cover different images, e.g. image id {odd!r}", reference_source, odd)
    image_ids = list(refs)
    preds_by_set: dict[str, dict[str, str]] = {}
    missing_by_set: dict[str, list[str]] = {}
    for name, preds in prediction_sets.items():
        preds = {str(k): v for k, v in preds.items()}
        missing_by_set[name] = _check_predictions(refs, preds, sources.get(name, name), strict)
        preds_by_set[name] = preds

    # One tokenizer call for everything; a missing prediction is the empty caption.
    to_tokenize: dict[Hashable, list[str]] = {("ref", i): refs[i] for i in image_ids}
    for name, preds in preds_by_set.items():
        to_tokenize.update({(name, i): [preds.get(i, "")] for i in image_ids})
    tokenized = ptb_tokenize(to_tokenize)
    gts = {i: tokenized[("ref", i)] for i in image_ids}

    spice_ok, spice_reason = spice_status()
    own_meteor = meteor is None
    if own_meteor:
        meteor = start_meteor()  # one Java process for all sets
    results: dict[str, CaptionResult] = {}
    try:
        for name, preds in preds_by_set.items():
            res = {i: tokenized[(name, i)] for i in image_ids}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            metrics = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
            metrics["METEOR"] = float(meteor.compute_score(gts, res)[0])
            metrics["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
            metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
            per_domain = cider_by_domain(gts, res, domains) if domains else {}
            spice = {"available": False, "reason": spice_reason, "value": None}
            if spice_ok:  # only reachable where the CoreNLP 3.6.0 jars were installed by hand
                try:
                    from pycocoevalcap.spice.spice import Spice

                    spice = {"available": True, "reason": "", "value": float(Spice().compute_score(gts, res)[0])}
                except Exception as err:  # SPICE's Java side fails in many environment-specific ways
                    spice = {"available": False, "reason": f"SPICE failed: {type(err).__name__}: {err}", "value": None}
            missing = missing_by_set[name]
            results[name] = CaptionResult(
                metrics=metrics,
                spice=spice,
                per_domain=per_domain,
                n_images=len(image_ids),
                n_scored=len(image_ids) - len(missing),
                n_missing=len(missing),
                missing_examples=missing[:10],
                tokenizer="pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, -lowerCase, punctuation removed)",
                sources=[s for s in (reference_source, sources.get(name)) if s],
                versions={"pycocoevalcap": _pycocoevalcap_version(), "metric_version": str(METRIC_VERSION)},
            )
    finally:
        if own_meteor:
            del meteor  # pycocoevalcap's Meteor ends its Java process in __del__
    return results


def score_captions(
    refs: Mapping[Any, list[str]],
    preds: Mapping[Any, str],
    *,
    domains: Mapping[Any, str] | None = None,
    strict: bool = False,
    predictions_source: str | None = None,
    reference_source: str | None = None,
    meteor: Any = None,
) -> CaptionResult:
    """Score one prediction set: {image id: [references]} and {image id: caption} -> CaptionResult."""
    name = predictions_source or "predictions"
    return score_caption_sets(
        refs, {name: preds}, domains=domains, strict=strict, sources={name: name}, reference_source=reference_source, meteor=meteor
    )[name]


# =============================================================================================
# Command line


def format_table(result: CaptionResult) -> str:
    from tabulate import tabulate

    rows = [[name, f"{100 * value:.2f}"] for name, value in result.metrics.items()]
    rows.append(["SPICE", f"{100 * result.spice['value']:.2f}" if result.spice["available"] else "unavailable"])
    rows += [[f"CIDEr ({d}, {v['count']} images)", f"{100 * v['CIDEr']:.2f}"] for d, v in result.per_domain.items()]
    lines = [tabulate(rows, headers=["metric", "score x100"])]
    if not result.spice["available"]:
        lines.append(f"SPICE unavailable: {result.spice['reason']}")
    counts = f"scored {result.n_scored} of {result.n_images} images; missing predictions (scored as empty captions): {result.n_missing}"
    if result.n_missing:
        counts += f", e.g. {', '.join(result.missing_examples[:5])}"
    lines.append(counts)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.caption", description=__doc__.split("\n\n")[0])
    p.add_argument("--annotations", required=True, help="references: Karpathy dataset_*.json, COCO-format captions, or NoCaps val json")
    p.add_argument("--predictions", required=True, help='COCO results file: [{"image_id", "caption"}]')
    p.add_argument("--split", default="test", help="split of a Karpathy file (default: test)")
    p.add_argument("--strict", action="store_true", help="refuse when some images have no prediction (default: score as empty, count)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    from eval.datasets import read_caption_predictions, read_caption_references

    args = build_parser().parse_args(argv)
    try:
        refs = read_caption_references(args.annotations, args.split)
        preds = read_caption_predictions(args.predictions)
        result = score_captions(
            refs.refs, preds, domains=refs.domains, strict=args.strict,
            predictions_source=args.predictions, reference_source=args.annotations,
        )  # fmt: skip
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from harness.io import provenance

    result.provenance = provenance()
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
