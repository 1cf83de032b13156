"""VILA Table 2: statistics of the pre-training corpora, measured on the corpora the stage-1 loader reads.

    python reproduce/vila_table2.py [--profile mini] [--check] [--update-band]
    python reproduce/vila_table2.py --profile paper --data-root DIR [--check]

Nothing is trained. Each corpus is read through the stage-1 sample builders of `model/vila/data.py`
(`mmc4_segments`, `coyo_segments`: the documents as `vila_pretrain` turns them into samples: at most six images per
MMC4 document, an image that is not there is left out, sentences joined as the loader joins them) and every text
segment is tokenized with the model's text tokenizer, without BOS / EOS. Per corpus:

    #img/sample     images per sample
    #tok./img       text tokens per image (all text tokens / all images)
    #tok./sample    text tokens per sample (mini profile only: the paper prints no such column)

Rows: "MMC4" (interleaved documents), "MMC4 (pairs)" (the same documents in Table 3's pairs format: only each image's
matched sentence), "COYO" (one image-text pair per sample, the paper's definition of its row) and "COYO (4 pairs)"
(the samples stage 1 draws: four pairs, each trained as its own row). The paper profile has the paper's two rows and two columns.

`mini` (seconds): the mini world's corpora as `vila_pretrain --config mini` builds them
(`write_miniworld_data`: 800 MMC4-format documents of 2-8 train images with their captions between sentences of the
corpus; the COYO-style pairs are the world's caption samples), with the world's BPE tokenizer. The paper's numbers
describe its corpora and its tokenizer, so the claims are orderings (results/mini/vila_table2.yaml), e.g. MMC4
samples carry more images and more text than COYO's, and COYO's text per image is shorter.

`paper`: the real corpora under `--data-root` in their official layouts, the first 100,000 samples of each
(files in sorted order), with the Llama-2 tokenizer (the paper does not name one):

    {data}/mmc4/*.jsonl               MMC4-core documents (official fields: text_list, image_info with image_name or
                                      image_base64, matched_text_index)
    {data}/mmc4/images/               the documents' downloaded images (`image_name`), when not inline
    {data}/coyo/*.tar                 COYO-700M in img2dataset's layout (KEY.jpg + KEY.txt [+ KEY.json])
    {data}/weights/llama-2-7b/        Llama-2-7B's tokenizer (tokenizer.model or tokenizer.json)

A missing path is one `error:` line naming it (exit 2), before anything is read.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.errors import InputError
from reproduce.compare import BandRule
from reproduce.table import Column, Computed, Profile, TableSpec, main, register_table

COLUMNS = ("#img/sample", "#tok./img", "#tok./sample")
PAPER_SAMPLES = 100_000  # per corpus, paper profile: the first samples in sorted file order
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")

# ---------------------------------------------------------------------------------------------
# Reading the corpora as stage 1 does (no image is decoded: only whether it is there counts).


def mmc4_samples(files: list[str], image_root: str | None, fmt: str, max_images: int, limit: int | None = None) -> Iterator[list]:
    """The segments of each MMC4 document (in file order) as `mmc4_segments` builds them; an `image_info` entry
    counts as an image when its bytes are inline or its `image_name` file exists (images are not decoded)."""
    from model.vila.data import mmc4_segments

    def present(info: dict) -> Any:
        if info.get("image_base64"):
            return True
        name = info.get("image_name")
        return True if name and image_root and (Path(image_root) / name).is_file() else None

    n = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if limit is not None and n >= limit:
                    return
                if not line.strip():
                    continue
                segments = mmc4_segments(json.loads(line), load_image=present, fmt=fmt, max_images=max_images)
                if segments is not None:
                    n += 1
                    yield segments


def coyo_pairs(shards: list[str], limit: int | None = None, caption_only: bool = True) -> Iterator[str]:
    """The caption of each image-text pair of img2dataset tar shards (a key with an image file and a KEY.txt), in
    shard order. `caption_only`: skip samples whose KEY.json says `kind` is not "caption" (the mini world's shards
    also hold question texts; stage 1 reads only its captions)."""
    n = 0
    for shard in shards:
        members: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                head, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{head}/{stem}" if head else stem
                if key not in members:
                    members[key] = {}
                    order.append(key)
                ext = ext.lower()
                if ext in ("txt", "json"):
                    members[key][ext] = tar.extractfile(member).read().decode("utf-8")
                elif ext in IMAGE_EXTENSIONS:
                    members[key]["image"] = True
        for key in order:
            parts = members[key]
            if "image" not in parts or "txt" not in parts:
                continue
            if caption_only and "json" in parts and json.loads(parts["json"]).get("kind", "caption") != "caption":
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield parts["txt"]


def grouped(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Consecutive groups of n (the last, incomplete group is dropped, as stage 1's `Grouped` never yields it)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []


def statistics(samples: Iterable[list], tokenize: Callable[[str], list[int]]) -> dict[str, float]:
    """Means over samples: images per sample, text tokens per image (ratio of totals), text tokens per sample."""
    from model.vila.data import Rows

    n = images = tokens = 0
    for sample in samples:
        n += 1
        for seg in (s for row in sample for s in row) if isinstance(sample, Rows) else sample:  # a sample's rows count together
            if seg.kind == "image":
                images += 1
            elif seg.kind == "text":
                tokens += len(tokenize(seg.text)) if seg.text else 0
    if n == 0 or images == 0:
        raise InputError("a corpus yielded no sample with an image")
    return {"#img/sample": images / n, "#tok./img": tokens / images, "#tok./sample": tokens / n, "samples": n}


def corpus_table(mmc4: list[str], image_root: str | None, coyo: list[str], tokenize: Callable[[str], list[int]],
                 limit: int | None = None, caption_only: bool = True) -> dict[str, dict[str, float]]:
    """Every row of the mini profile: {row: {column: value, "samples": n}}."""
    from model.vila.data import COYO_PAIRS_PER_SAMPLE, MAX_IMAGES_PER_DOC, coyo_segments

    pairs = list(coyo_pairs(coyo, limit * COYO_PAIRS_PER_SAMPLE if limit else None, caption_only))
    return {
        "MMC4": statistics(mmc4_samples(mmc4, image_root, "interleaved", MAX_IMAGES_PER_DOC, limit), tokenize),
        "MMC4 (pairs)": statistics(mmc4_samples(mmc4, image_root, "pairs", MAX_IMAGES_PER_DOC, limit), tokenize),
        "COYO": statistics((coyo_segments([(True, c)]) for c in pairs[:limit]), tokenize),
        "COYO (4 pairs)": statistics((coyo_segments([(True, c) for c in g]) for g in grouped(pairs, COYO_PAIRS_PER_SAMPLE)), tokenize),
    }


def _tokenizer(folder: Path) -> Callable[[str], list[int]]:
    from model.text_tokenizer import load_text_tokenizer

    tok = load_text_tokenizer(folder)
    return lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []


# ---------------------------------------------------------------------------------------------
# The two profiles' data.

_MEASURED: dict[int, dict[str, dict[str, float]]] = {}


def _mini_corpora(ctx) -> dict[str, dict[str, float]]:
    """The mini world's corpora as `vila_pretrain --config mini` reads them: the same `write_miniworld_data` call with
    the same defaults as the stage, written afresh into a temporary folder (a cache keyed by the world alone would
    outlive a change of the converter's code)."""
    import tempfile

    from model.vila.data import write_miniworld_data

    shards = sorted(str(p) for p in (Path(ctx.data_root) / "shards").glob("train-*.tar"))
    with tempfile.TemporaryDirectory(prefix="vila_table2-") as tmp:
        paths = write_miniworld_data(ctx.data_root, Path(tmp) / "miniworld_data")
        return corpus_table([paths["mmc4"]], paths["image_root"], shards, _tokenizer(Path(ctx.data_root) / "tokenizer"))


def paper_paths(data_root: Path) -> dict[str, Any]:
    """The official layouts under --data-root; a missing one is an InputError naming it."""
    mmc4 = sorted(str(p) for p in (data_root / "mmc4").glob("*.jsonl"))
    coyo = sorted(str(p) for p in (data_root / "coyo").glob("*.tar"))
    tokenizer = data_root / "weights" / "llama-2-7b"
    if not mmc4:
        raise InputError(f"no MMC4 documents: {data_root / 'mmc4'}/*.jsonl (MMC4-core JSONL shards) matches no file")
    if not coyo:
        raise InputError(f"no COYO shards: {data_root / 'coyo'}/*.tar (img2dataset layout) matches no file")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise InputError(f"no Llama-2 tokenizer: {tokenizer}/tokenizer.model (or tokenizer.json) does not exist")
    images = data_root / "mmc4" / "images"
    return {"mmc4": mmc4, "image_root": str(images) if images.is_dir() else None, "coyo": coyo, "tokenizer": tokenizer}


def _paper_corpora(ctx) -> dict[str, dict[str, float]]:
    paths = paper_paths(Path(ctx.data_root))
    return corpus_table(paths["mmc4"], paths["image_root"], paths["coyo"], _tokenizer(paths["tokenizer"]),
                        limit=ctx.profile.eval_limit, caption_only=False)  # fmt: skip


def _row(name: str, columns: tuple[str, ...]):
    def fn(ctx) -> dict[str, float]:
        if id(ctx) not in _MEASURED:
            _MEASURED.clear()
            _MEASURED[id(ctx)] = _mini_corpora(ctx) if ctx.profile_name == "mini" else _paper_corpora(ctx)
        stats = _MEASURED[id(ctx)][name]
        return {c: stats[c] for c in columns}

    return fn


def _columns(labels: tuple[str, ...]) -> tuple[Column, ...]:
    # Not evaluations: the Computed rows fill them; `derive` is never called.
    return tuple(Column(label, "", "", derive=lambda ctx, path: float("nan")) for label in labels)


MINI_ROWS = ("MMC4", "MMC4 (pairs)", "COYO", "COYO (4 pairs)")
MINI = Profile(
    rows={name: Computed(_row(name, COLUMNS), "measured on the mini world's corpora") for name in MINI_ROWS},
    columns=_columns(COLUMNS),
    reference="mini/vila_table2",
    mode="claim",
    data="miniworld",
    band_rules={"#img/sample": BandRule(relative=0.02, floor=0.05), "#tok./img": BandRule(relative=0.02, floor=0.5),
                "#tok./sample": BandRule(relative=0.02, floor=0.5)},  # fmt: skip
    describe="The mini world's pre-training corpora as vila_pretrain --config mini reads them (the world's BPE "
             "tokenizer). Not comparable with the paper's numbers (its corpora, Llama-2's tokenizer).",
)

PAPER_COLUMNS = ("#img/sample", "#tok./img")
PAPER = Profile(
    rows={name: Computed(_row(name, PAPER_COLUMNS), "measured on the corpora under --data-root") for name in ("MMC4", "COYO")},
    columns=_columns(PAPER_COLUMNS),
    reference="vila_table2",
    mode="numeric",
    preset="paper",
    data="data-root",
    eval_limit=PAPER_SAMPLES,
    describe=f"MMC4-core and COYO under --data-root, the first {PAPER_SAMPLES:,} samples of each, Llama-2 tokenizer.",
)

TABLE = register_table(TableSpec(key="vila_table2", script="reproduce/vila_table2.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
