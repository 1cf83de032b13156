"""The text world (VILA Table 7's mini TextVQA): a reduced build (200 train / 50 test images) read back by the
project's readers, TextVQA's among them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.tasks import read_textvqa_val
from harness.miniworld import build_miniworld, load_miniworld
from harness.textworld import BANNER_TOP, DIGITS, FONT_5X7, GLYPH_SCALES, INK, PAPER, build_textworld, digit_labels, main, with_banner

SIZE = {"train_images": 200, "test_images": 50}


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw")
    plain = build_miniworld(root / "miniworld", seed=0, **SIZE)
    return plain, build_textworld(root / "miniworld-text", root / "miniworld")


def _samples(world) -> list[tuple[bytes, str, dict]]:
    out = []
    for shard in world.shard_files:
        with tarfile.open(shard) as tar:
            parts: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                parts.setdefault(key, {})[ext] = tar.extractfile(m).read()
        out += [(p["png"], p["txt"].decode(), json.loads(p["json"])) for p in parts.values()]
    return out


def _read_digit(image: Image.Image, size: str) -> str:
    """The digit printed along the banner, read back by matching every copy's ink pixels exactly (the inverse of
    with_banner): all copies must read the same digit."""
    pixels = np.array(image.convert("RGB"))
    s, y = GLYPH_SCALES[size], BANNER_TOP + GLYPH_SCALES[size]
    read = set()
    for x in range(s, 64 - 5 * s + 1, 7 * s):
        ink = (pixels[y : y + 7 * s : s, x : x + 5 * s : s] == INK).all(-1)  # one pixel per font pixel
        read |= {d for d, rows in FONT_5X7.items() if (ink == np.array([[c == "1" for c in r] for r in rows])).all()}
    assert len(read) == 1
    return read.pop()


def test_the_banner_prints_the_digit_on_white_and_reports_covering_the_shape():
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    for size, s in GLYPH_SCALES.items():
        for digit in DIGITS:
            tagged, covers = with_banner(blank, digit, size)
            assert _read_digit(tagged, size) == digit and not covers
            pixels = np.array(tagged)
            banner = pixels[BANNER_TOP : BANNER_TOP + 9 * s]
            assert {tuple(p) for p in banner.reshape(-1, 3)} == {PAPER, INK}
            assert (pixels[: BANNER_TOP] == 240).all() and (pixels[BANNER_TOP + 9 * s :] == 240).all()  # nothing else drawn
    shape = blank.copy()
    shape.paste((255, 0, 0), (30, 8, 34, 12))
    assert with_banner(shape, "3", "small")[1] and not with_banner(shape, "3", "small")[0].getpixel((31, 9)) == (255, 0, 0)


def test_every_image_carries_its_recorded_digit_and_the_digits_are_spread(worlds):
    plain, text = worlds
    train, test = digit_labels(text, "train"), digit_labels(text, "test")
    sizes = {split: digit_labels(text, split, "digit_sizes") for split in ("train", "test")}
    assert set(train) == set(plain.labels["train"]) and set(test) == set(plain.labels["test"])
    assert len(Counter(train.values())) == 10 and max(Counter(train.values()).values()) < 0.2 * len(train)
    assert 0.35 < Counter(sizes["train"].values())["small"] / len(train) < 0.65
    for png, _, meta in _samples(text):
        i = str(meta["image_id"])
        assert _read_digit(Image.open(io.BytesIO(png)), sizes["train"][i]) == train[i] == meta["digit"]
    for i, digit in test.items():
        assert _read_digit(Image.open(text.test_image_dir / f"{i}.png"), sizes["test"][i]) == digit
    with pytest.raises(ValueError, match="plain mini world"):
        digit_labels(plain, "test")


def test_the_shards_hold_the_plain_samples_plus_a_digit_caption_and_question_per_train_image(worlds):
    plain, text = worlds
    before, after = _samples(plain), _samples(text)
    digits = digit_labels(text, "train")
    plain_texts = Counter((m["image_id"], t) for _, t, m in before)
    added = Counter((m["image_id"], t) for _, t, m in after) - plain_texts
    assert sum(plain_texts.values()) + sum(added.values()) == len(after)
    assert len(added) == sum(added.values()) == 3 * len(digits)
    for (image_id, text_), _ in added.items():
        assert digits[str(image_id)] in text_
    questions = [m for _, _, m in after if m["kind"] == "vqa" and m["answer"] in DIGITS]
    assert len(questions) == len(digits) and all(m["answer"] == digits[str(m["image_id"])] for m in questions)
    assert text.counts["train_samples"] == len(after) and text.counts["digit_samples"] == 3 * len(digits)


def test_textvqa_reads_one_digit_question_per_test_image_from_jpegs(worlds):
    _, text = worlds
    samples, image_dir = read_textvqa_val(Path(text.root), None)
    test = digit_labels(text, "test")
    assert sorted(int(s.id) for s in samples) == sorted(int(i) for i in test)
    for s in samples:
        assert s.references == (test[str(s.id)],) * 10 and "number" in s.text
        with Image.open(image_dir / s.image) as jpeg:
            assert jpeg.format == "JPEG" and jpeg.size == (64, 64)
    # The colour/shape questions and the other parts are the plain world's.
    assert text.vqa_questions_file.read_bytes() == worlds[0].vqa_questions_file.read_bytes()
    assert tree_hash(text.root / "text") == tree_hash(worlds[0].root / "text")
    refs = json.loads(text.captions_file.read_text())["images"]
    assert all(any(test[str(r["imgid"])] in s["raw"] for s in r["sentences"]) for r in refs)


def test_a_second_build_is_reused_and_a_rebuild_gives_the_same_bytes(worlds, tmp_path):
    plain, text = worlds
    marker = (text.root / "DONE").stat().st_mtime_ns
    assert load_miniworld(build_textworld(text.root, plain.root).root).counts == text.counts
    assert (text.root / "DONE").stat().st_mtime_ns == marker
    again = build_textworld(tmp_path / "again", plain.root)
    assert tree_hash(again.root) == tree_hash(text.root)
    with pytest.raises(ValueError, match="text world built with"):
        build_textworld(text.root, plain.root, seed=1)
    other = build_textworld(tmp_path / "other", plain.root, seed=1)
    assert json.loads((other.root / "DONE").read_text())["hash"] != json.loads((text.root / "DONE").read_text())["hash"]
    assert digit_labels(other, "test") != digit_labels(text, "test")


def test_cli_builds_and_reports_a_wrong_root_as_one_error_line(worlds, tmp_path, capsys):
    plain, text = worlds
    assert main(["--root", str(tmp_path / "cli"), "--base", str(plain.root)]) == 0
    assert "textvqa_questions" in capsys.readouterr().out
    assert main(["--root", str(text.root), "--base", str(plain.root), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def _predictions(task_dir: Path, answers: dict) -> None:
    task_dir.mkdir(parents=True)
    lines = [json.dumps({"header": {"format": 1}})] + [json.dumps({"id": i, "prediction": a}) for i, a in answers.items()]
    (task_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def test_table7_scores_textvqa_by_digit_size_and_the_blind_row_from_the_world(worlds, tmp_path):
    from types import SimpleNamespace

    from reproduce import vila_table7

    _, text = worlds
    ctx = SimpleNamespace(world=text, data_root=Path(text.root), profile=vila_table7.MINI)
    samples, _ = read_textvqa_val(Path(text.root), None)
    digits, sizes = digit_labels(text, "test"), digit_labels(text, "test", "digit_sizes")
    _predictions(tmp_path / "oracle", {s.id: digits[str(s.id)] for s in samples})
    _predictions(tmp_path / "fives", {s.id: "5" for s in samples})
    for size in ("small", "large"):
        derive = vila_table7.accuracy_on("textvqa_val", vila_table7._digit_size_is(size))
        asked = [i for i in digits if sizes[i] == size]
        assert derive(ctx, tmp_path / "oracle") == 100.0
        assert derive(ctx, tmp_path / "fives") == pytest.approx(100 * sum(digits[i] == "5" for i in asked) / len(asked))
    majority = Counter(digit_labels(text, "train").values()).most_common(1)[0][0]
    assert vila_table7._blind(ctx) == {"TextVQA (mini digits)": pytest.approx(100 * sum(d == majority for d in digits.values()) / len(digits))}


def test_table7_probes_are_computed_once_per_world_and_key(worlds, tmp_path):
    from types import SimpleNamespace

    from reproduce import vila_table7

    plain, text = worlds
    calls = []
    compute = lambda: calls.append(1) or 42.5  # noqa: E731
    ctx = SimpleNamespace(world=text, runs_dir=tmp_path)
    assert vila_table7._cached_probe(ctx, {"probe": "pixels", "vision": "v"}, compute) == 42.5
    assert vila_table7._cached_probe(ctx, {"probe": "pixels", "vision": "v"}, compute) == 42.5 and len(calls) == 1
    vila_table7._cached_probe(ctx, {"probe": "pixels", "vision": "w"}, compute)  # another key
    vila_table7._cached_probe(SimpleNamespace(world=plain, runs_dir=tmp_path), {"probe": "pixels", "vision": "v"}, compute)  # another world
    assert len(calls) == 3 and len(list((tmp_path / "probes").glob("*.json"))) == 3
