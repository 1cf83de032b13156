"""VILA Table 2 (reproduce/vila_table2.py): corpus statistics equal counts derived independently, on a hand-made
corpus and on a small mini world; the paper profile names a missing path in one error line (exit 2)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from reproduce import vila_table2 as t2


def _words(text: str) -> list[int]:
    return [0] * len(text.split())


def _tar(path: Path, pairs: list[tuple[str, str, str | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, caption, kind in pairs:
            files = {f"{key}.jpg": b"\xff\xd8fake", f"{key}.txt": caption.encode()}
            if kind:
                files[f"{key}.json"] = json.dumps({"kind": kind}).encode()
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_statistics_of_a_hand_made_corpus(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"x")
    docs = [
        # 2 images (one matched to each sentence); 6 words
        {"text_list": ["one two three", "four five six"], "image_info": [
            {"image_name": "a.png", "matched_text_index": 0}, {"image_name": "b.png", "matched_text_index": 1}]},
        # 1 image that exists, 1 missing (left out), 1 inline; 4 words
        {"text_list": ["seven eight", "nine ten"], "image_info": [
            {"image_name": "c.png", "matched_text_index": 1}, {"image_name": "gone.png", "matched_text_index": 0},
            {"image_base64": "eA==", "matched_text_index": 0}]},
        # no usable image: not a sample
        {"text_list": ["eleven"], "image_info": [{"image_name": "gone.png", "matched_text_index": 0}]},
    ]
    mmc4 = tmp_path / "docs.jsonl"
    mmc4.write_text("".join(json.dumps(d) + "\n" for d in docs))
    pairs = [(f"{i:03d}", " ".join(["w"] * (i + 1)), "caption") for i in range(9)] + [("q", "not a caption at all", "vqa")]
    _tar(tmp_path / "train-0000.tar", pairs)
    table = t2.corpus_table([str(mmc4)], str(images), [str(tmp_path / "train-0000.tar")], _words)
    # MMC4: 2 samples, 4 images, 10 words; pairs: only each image's matched sentence (3 + 3 + 2 + 2 words)
    assert table["MMC4"] == {"#img/sample": 2.0, "#tok./img": 2.5, "#tok./sample": 5.0, "samples": 2}
    assert table["MMC4 (pairs)"] == {"#img/sample": 2.0, "#tok./img": 10 / 4, "#tok./sample": 5.0, "samples": 2}
    # COYO: the 9 captions (1..9 words; the "vqa" sample is skipped); 4-pair samples: 2 (the last pair is left over)
    assert table["COYO"] == {"#img/sample": 1.0, "#tok./img": 5.0, "#tok./sample": 5.0, "samples": 9}
    assert table["COYO (4 pairs)"] == {"#img/sample": 4.0, "#tok./img": 36 / 8, "#tok./sample": 18.0, "samples": 2}


def test_pairs_format_drops_unmatched_sentences(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    doc = {"text_list": ["alpha beta", "gamma", "delta epsilon zeta"], "image_info": [{"image_name": "a.png", "matched_text_index": 2}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(doc) + "\n")
    _tar(tmp_path / "s.tar", [(str(i), "x", None) for i in range(4)])
    table = t2.corpus_table([str(tmp_path / "d.jsonl")], str(tmp_path), [str(tmp_path / "s.tar")], _words)
    assert table["MMC4"]["#tok./sample"] == 6 and table["MMC4 (pairs)"]["#tok./sample"] == 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.miniworld import build_miniworld

    return build_miniworld(tmp_path_factory.mktemp("mw") / "world", seed=0, train_images=40, test_images=10)


def test_mini_world_counts_match_the_files(world, tmp_path):
    from harness.miniworld import CAPTIONS_PER_IMAGE
    from model.vila.data import MAX_IMAGES_PER_DOC, write_miniworld_data

    paths = write_miniworld_data(world.root, tmp_path / "vila", docs=50)
    shards = sorted(str(p) for p in (Path(world.root) / "shards").glob("train-*.tar"))
    tok = t2._tokenizer(Path(world.root) / "tokenizer")
    table = t2.corpus_table([paths["mmc4"]], paths["image_root"], shards, tok)
    docs = [json.loads(l) for l in Path(paths["mmc4"]).read_text().splitlines()]
    expected_images = sum(min(len(d["image_info"]), MAX_IMAGES_PER_DOC) for d in docs)
    assert table["MMC4"]["samples"] == 50 and table["MMC4"]["#img/sample"] == pytest.approx(expected_images / 50)
    n_captions = CAPTIONS_PER_IMAGE * json.loads((Path(world.root) / "miniworld.json").read_text())["counts"]["train_images"]
    assert table["COYO"]["samples"] == n_captions and table["COYO (4 pairs)"]["samples"] == n_captions // 4
    assert table["COYO"]["#tok./img"] == pytest.approx(table["COYO (4 pairs)"]["#tok./img"], rel=0.05)
    assert table["COYO"]["#tok./img"] < table["MMC4"]["#tok./img"]


def test_paper_profile_without_data_is_one_error_line(tmp_path, capsys):
    assert t2.main(t2.TABLE, ["--profile", "paper", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--data-root" in err[0]


def test_paper_profile_names_the_missing_path(tmp_path, capsys):
    (tmp_path / "mmc4").mkdir()
    (tmp_path / "mmc4" / "docs.jsonl").write_text("")
    assert t2.main(t2.TABLE, ["--profile", "paper", "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "out"),
                              "--runs-dir", str(tmp_path / "runs")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(tmp_path / "coyo") in err[0]
    assert not (tmp_path / "out").exists()


def test_paper_profile_measures_official_layouts(world, tmp_path, capsys):
    import shutil

    import pandas as pd

    data = tmp_path / "data"
    (data / "mmc4" / "images").mkdir(parents=True)
    (data / "coyo").mkdir()
    (data / "mmc4" / "images" / "a.jpg").write_bytes(b"x")
    doc = {"text_list": ["a red circle.", "more text here."], "image_info": [{"image_name": "a.jpg", "matched_text_index": 0}]}
    (data / "mmc4" / "docs_shard_0_v3.jsonl").write_text(json.dumps(doc) + "\n")
    _tar(data / "coyo" / "00000.tar", [(f"{i:05d}", "a blue square", None) for i in range(4)])
    shutil.copytree(Path(world.root) / "tokenizer", data / "weights" / "llama-2-7b")  # any tokenizer folder
    out = tmp_path / "out"
    assert t2.main(t2.TABLE, ["--profile", "paper", "--data-root", str(data), "--results-dir", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    frame = pd.read_csv(out / "vila_table2.csv")
    mine = frame[(frame["section"] == "paper") & (frame["kind"] == "number")].set_index(["row", "column"])
    assert mine.loc[("MMC4", "#img/sample"), "measured"] == 1.0 and mine.loc[("COYO", "#img/sample"), "measured"] == 1.0
    assert mine.loc[("MMC4", "#img/sample"), "verdict"] == "mismatch" and mine.loc[("COYO", "#img/sample"), "verdict"] == "match"
