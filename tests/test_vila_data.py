"""VILA's data formats (model/vila/data.py): MMC4 interleaving, its ablation variants, COYO concatenation,
conversation rendering and label masking, encoding with image expansion, the joint-SFT blend, the mini world's
conversion, and resume-exact streams."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.miniworld import yes_no_answer
from model.vila.data import (
    DOC_KINDS,
    IGNORE_INDEX,
    MAX_IMAGES_PER_DOC,
    Grouped,
    RecordList,
    conversation_segments,
    conversation_turns,
    coyo_rows,
    coyo_segments,
    Rows,
    encode,
    eos,
    image,
    layout,
    mmc4_segments,
    text,
    write_miniworld_data,
)
from train.data import JsonlRecords

pytestmark = pytest.mark.usefixtures("one_thread")


def _doc(sentences, matches):
    """An MMC4 document whose image k is the string f"img{k}", matched to sentence matches[k]."""
    return {"text_list": list(sentences), "image_info": [{"image_name": f"img{k}", "matched_text_index": m, "matched_sim": 0.3} for k, m in enumerate(matches)]}


def _names(info):
    return info["image_name"]


def _images(segments):
    return [s.image for s in segments if s.kind == "image"]


# ---------------------------------------------------------------------------------------------
# MMC4


def test_mmc4_images_go_before_their_matched_sentence_and_eos_ends_the_document():
    doc = _doc(["s0", "s1", "s2", "s3", "s4"], matches=[3, 1])
    segments = mmc4_segments(doc, _names)
    assert layout(segments) == "s0<image>s1 s2<image>s3 s4<eos>"  # no space around an image, as released
    assert _images(segments) == ["img1", "img0"]  # text order, not image_info order
    assert [s.kind for s in segments].count("eos") == 1 and segments[-1].kind == "eos"
    assert all(s.supervised for s in segments if s.kind != "image")


def test_mmc4_images_on_the_same_sentence_keep_their_order():
    segments = mmc4_segments(_doc(["a", "b"], matches=[1, 0, 1]), _names)
    assert layout(segments) == "<image>a<image><image>b<eos>"
    assert _images(segments) == ["img1", "img0", "img2"]


def test_mmc4_keeps_at_most_six_images_the_first_six_of_image_info():
    doc = _doc([f"s{i}" for i in range(10)], matches=[9, 8, 7, 6, 5, 4, 3, 2])
    segments = mmc4_segments(doc, _names)
    assert MAX_IMAGES_PER_DOC == 6
    assert sorted(_images(segments)) == [f"img{k}" for k in range(6)]  # img6, img7 (image_info entries 7, 8) dropped
    assert _images(segments) == [f"img{k}" for k in (5, 4, 3, 2, 1, 0)]


def test_mmc4_leaves_out_missing_images_and_bad_matches():
    doc = _doc(["a", "b", "c"], matches=[0, 7, 2])
    segments = mmc4_segments(doc, lambda info: None if info["image_name"] == "img0" else info["image_name"])
    assert layout(segments) == "a b<image>c<eos>"
    assert mmc4_segments(_doc(["a"], matches=[]), _names) is None  # no image: not an image-text sample
    assert mmc4_segments(_doc([], matches=[0]), _names) is None


def test_mmc4_pairs_keeps_only_matched_pairs():
    # The paper's example: <txt1><im1><txt2><txt3><im2><txt4> -> <im1><txt2>, <im2><txt4>
    rows = mmc4_segments(_doc(["t1", "t2", "t3", "t4"], matches=[1, 3]), _names, fmt="pairs")
    assert isinstance(rows, Rows) and [layout(r) for r in rows] == ["<image>t2<eos>", "<image>t4<eos>"]  # a row each


def test_mmc4_reformatted_puts_all_images_first():
    segments = mmc4_segments(_doc(["t1", "t2", "t3"], matches=[2, 0]), _names, fmt="reformatted")
    assert layout(segments) == "<image><image>t1 t2 t3<eos>"
    assert _images(segments) == ["img1", "img0"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), matches=st.lists(st.integers(0, 9), max_size=10))
def test_mmc4_interleaving_properties(n, matches):
    sentences = [f"S{i}." for i in range(n)]
    segments = mmc4_segments(_doc(sentences, matches), _names)
    valid = [(k, m) for k, m in enumerate(matches[:MAX_IMAGES_PER_DOC]) if m < n]
    if not valid:
        assert segments is None
        return
    assert len(_images(segments)) == len(valid) <= MAX_IMAGES_PER_DOC
    words = layout(segments).replace("<image>", " ").replace("<eos>", " <eos>").split()
    assert words == sentences + ["<eos>"]  # every sentence once, in order, then one EOS
    # Every image is followed (after any other images) by exactly the sentence it matches.
    for i, seg in enumerate(segments):
        if seg.kind == "image":
            nxt = next(s for s in segments[i:] if s.kind == "text")
            k = int(seg.image[3:])
            assert nxt.text.startswith(sentences[matches[k]])


# ---------------------------------------------------------------------------------------------
# COYO


class _ListStream:
    def __init__(self, items):
        self.items, self.pos = list(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.items[self.pos % len(self.items)]
        self.pos += 1
        return item

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]

    def stats(self):
        return {}


def test_coyo_concatenates_four_pairs_per_sample():
    pairs = Grouped(_ListStream([(f"im{i}", f" cap {i} ") for i in range(10)]), 4)
    first, second = next(pairs), next(pairs)
    assert layout(coyo_segments(first)) == "<image>cap 0<eos><image>cap 1<eos><image>cap 2<eos><image>cap 3<eos>"
    assert _images(coyo_segments(second)) == ["im4", "im5", "im6", "im7"]
    # As the released loader trains them (CONCAT_SAMPLES = False): each pair its own row, never two images in one.
    rows = coyo_rows(first)
    assert isinstance(rows, Rows) and [layout(r) for r in rows] == [f"<image>cap {i}<eos>" for i in range(4)]
    state = pairs.state_dict()
    third = next(pairs)
    pairs.load_state_dict(state)
    assert next(pairs) == third


# ---------------------------------------------------------------------------------------------
# Encoding


class _CharTokenizer:
    """One id per character (ids 10 + ord(c) % 50), enough to count positions exactly."""

    def __call__(self, s):
        return [10 + ord(c) % 50 for c in s]


def test_encode_puts_one_placeholder_per_image_and_masks_it():
    segs = [text("ab", supervised=False), image("I"), text("cd"), eos()]
    out = encode(segs, _CharTokenizer(), image_token_index=-200, tokens_per_image=5, bos_id=1, eos_id=2, max_len=100)
    assert out.input_ids == [1, 10 + ord("a") % 50, 10 + ord("b") % 50, -200, 10 + ord("c") % 50, 10 + ord("d") % 50, 2]
    assert out.labels == [IGNORE_INDEX] * 4 + out.input_ids[4:]
    assert out.images == ["I"] and out.length == 6 + 5
    assert out.supervised_targets() == 3


def test_encode_cuts_at_max_len_after_expansion_and_drops_an_image_that_does_not_fit():
    segs = [text("abcd"), image("I1"), text("ef"), image("I2"), text("gh"), eos()]
    out = encode(segs, _CharTokenizer(), image_token_index=-200, tokens_per_image=5, bos_id=1, eos_id=2, max_len=14)
    assert out.images == ["I1"] and out.length == 12  # 1 + 4 + 5 + 2; the second image (5 more) does not fit
    assert out.input_ids[-1] != -200
    cut = encode(segs, _CharTokenizer(), image_token_index=-200, tokens_per_image=5, bos_id=1, eos_id=2, max_len=3)
    assert cut.length == 3 and cut.images == []
    assert encode([image("I"), text("x", supervised=False)], _CharTokenizer(), image_token_index=-200, tokens_per_image=2,
                  bos_id=1, eos_id=2, max_len=50) is None  # nothing supervised


# ---------------------------------------------------------------------------------------------
# Conversations


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.miniworld import build_miniworld

    return build_miniworld(tmp_path_factory.mktemp("mw") / "world", seed=0, train_images=40, test_images=10)


@pytest.fixture(scope="module")
def tokenizer(world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(world.tokenizer_dir), local_files_only=True)


def _encode_conversation(record, template, tok, tokens_per_image=4):
    from model.vila.conversation import get_template

    segs = conversation_segments(conversation_turns(record), get_template(template).prompt, "IMG" if record.get("image") else None)
    return segs, encode(segs, lambda s: tok(s, add_special_tokens=False)["input_ids"], image_token_index=-200,
                        tokens_per_image=tokens_per_image, bos_id=1, eos_id=2, max_len=1000)


RECORD = {"image": "1.png", "conversations": [
    {"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "red"},
    {"from": "human", "value": "What shape?"}, {"from": "gpt", "value": "a circle"}]}


def test_sft_labels_cover_only_the_assistant_turns(tokenizer):
    from model.vila.conversation import get_template

    segs, out = _encode_conversation(RECORD, "vicuna_v1", tokenizer)
    supervised = [t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " red</s> a circle</s>"
    assert supervised.count(2) == 2  # each turn's </s> is the EOS id, and is learnt
    prompt = get_template("vicuna_v1").prompt([("<image>\nWhat colour is it?", "red"), ("What shape?", "a circle")])
    assert layout(segs) == prompt  # the image is moved to the front of the first turn (LLaVA)
    unsupervised = [t for t, l in zip(out.input_ids, out.labels) if l == IGNORE_INDEX and t >= 0]
    assert "USER: <image>" not in tokenizer.decode(unsupervised) and "ASSISTANT:" in tokenizer.decode(unsupervised)


def test_sft_prompt_tokens_match_what_evaluation_generates_from(tokenizer):
    from model.vila.conversation import get_template, tokenize_with_images

    _, out = _encode_conversation(RECORD, "vicuna_v1", tokenizer)
    open_prompt = get_template("vicuna_v1").prompt([("<image>\nWhat colour is it?", None)])
    eval_ids = tokenize_with_images(open_prompt, tokenizer, -200)
    assert out.input_ids[: len(eval_ids)] == eval_ids
    assert all(l == IGNORE_INDEX for l in out.labels[: len(eval_ids)])
    assert out.labels[len(eval_ids)] != IGNORE_INDEX


def test_plain_template_supervises_the_caption(tokenizer):
    record = {"image": "1.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red circle."}]}
    segs, out = _encode_conversation(record, "plain", tokenizer)
    assert layout(segs) == "<image>a red circle.\n"
    assert out.input_ids[:2] == [1, -200]
    assert tokenizer.decode([t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX]) == "a red circle.\n"


def test_text_only_records_have_no_image_and_bad_roles_are_refused(tokenizer):
    segs, out = _encode_conversation({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]}, "vicuna_v1", tokenizer)
    assert out.images == [] and -200 not in out.input_ids
    with pytest.raises(ValueError, match="role"):
        conversation_turns({"conversations": [{"from": "system", "value": "x"}]})
    with pytest.raises(ValueError, match="alternate"):
        conversation_turns({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]})


# ---------------------------------------------------------------------------------------------
# The mini world in VILA's layouts


@pytest.fixture(scope="module")
def converted(world, tmp_path_factory):
    return write_miniworld_data(world.root, tmp_path_factory.mktemp("vila_data"), docs=60)


def test_miniworld_conversion_writes_official_layouts_from_the_train_split(world, converted):
    train_ids = set(world.labels["train"])
    docs = [json.loads(l) for l in Path(converted["mmc4"]).read_text().splitlines()]
    assert len(docs) == 60
    counts = []
    for doc in docs:
        assert set(doc) >= {"text_list", "image_info"}
        for info in doc["image_info"]:
            assert set(info) >= {"image_name", "matched_text_index", "matched_sim"}
            assert info["image_name"][: -len(".png")] in train_ids
            assert (Path(converted["image_root"]) / info["image_name"]).is_file()
            shape, color = world.labels["train"][info["image_name"][:-4]]
            matched = doc["text_list"][info["matched_text_index"]]
            if matched.startswith("Question: "):  # a page of questions: one about this image, answered for it
                q, _, a = matched[len("Question: "):].partition(" Answer: ")
                assert a.removesuffix(".") == (yes_no_answer(q, shape, color) or (color if "color" in q else shape))
            else:
                assert shape in matched  # its caption
        counts.append(len(doc["image_info"]))
    assert min(counts) >= 2 and max(counts) > MAX_IMAGES_PER_DOC  # the cap is exercised by the data
    sft = json.loads(Path(converted["sft"]).read_text())
    assert {r["image"][:-4] for r in sft} == train_ids
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in sft)
    assert all("<image>" not in t["value"] for r in sft for t in r["conversations"][1:])
    text_sft = json.loads(Path(converted["text_sft"]).read_text())
    assert len(text_sft) > 100 and all("image" not in r for r in text_sft)
    # one human turn per question of a qa document, the scene in the first only
    turns = Counter(len(r["conversations"]) // 2 for r in text_sft)
    assert set(turns) == {1, 2, 3, 4}
    later = [t["value"] for r in text_sft for t in r["conversations"][2::2]]
    assert later and not any(" is drawn on " in v or "picture shows" in v or "In the image" in v for v in later)
    align = json.loads(Path(converted["align"]).read_text())
    assert len(align) == 3 * len(train_ids)  # one record per caption sample


def test_yes_no_answers_are_easy_vqas_on_every_train_question(world):
    """`yes_no_answer`, from an image's labels, gives easy-vqa's own answer to every yes/no train question, and
    none to an open one: the complements of `balanced_questions` are answered by the rule the data follow."""
    from model.vila.data import _miniworld_images

    asked = 0
    for im in _miniworld_images(Path(world.root)):
        shape, color = world.labels["train"][str(im.image_id)]
        for q, a in im.questions:
            assert yes_no_answer(q, shape, color) == (a if a in ("yes", "no") else None), q
            asked += a in ("yes", "no")
    assert asked > 20


def test_sft_yes_no_questions_are_balanced_pairs(world, converted):
    """VQA v2's balancing: in the SFT data every yes/no question string is answered "yes" exactly as often as "no",
    each answer right for its image, and every original question of an image is still asked of it."""
    from model.vila.data import _miniworld_images

    sft = json.loads(Path(converted["sft"]).read_text())
    answers: dict[str, Counter] = {}
    asked: dict[str, set] = {}
    for record in sft:
        shape, color = world.labels["train"][record["image"][:-4]]
        turns = record["conversations"]
        for user, assistant in zip(turns[::2], turns[1::2]):
            q = user["value"].removeprefix("<image>\n").split("\n")[0]
            asked.setdefault(record["image"][:-4], set()).add((q, assistant["value"]))
            if assistant["value"] in ("yes", "no"):
                assert yes_no_answer(q, shape, color) == assistant["value"]
                answers.setdefault(q, Counter())[assistant["value"]] += 1
    for q, counts in answers.items():
        assert counts["yes"] == counts["no"], (q, counts)
    for im in _miniworld_images(Path(world.root)):
        assert set(im.questions) <= asked[str(im.image_id)]


def test_mini_mmc4_has_pages_that_repeat_a_task_from_image_to_image(converted):
    """Besides web pages, the documents hold pages of questions and galleries (DOC_KINDS): the counterparts of a
    k-shot prompt, each image's matched sentence a question (or a caption) with no other sentence in between."""
    kinds = Counter()
    for line in Path(converted["mmc4"]).read_text().splitlines():
        doc = json.loads(line)
        matched = sorted(i["matched_text_index"] for i in doc["image_info"])
        if matched == list(range(len(matched))):  # image, its sentence, image, its sentence, ...
            text = [doc["text_list"][i] for i in matched]
            kinds["question page" if all(t.startswith("Question: ") for t in text) else "gallery"] += 1
        else:
            kinds["web page"] += 1
    assert set(kinds) == set(DOC_KINDS), kinds


def test_miniworld_conversion_is_deterministic(world, converted, tmp_path):
    again = write_miniworld_data(world.root, tmp_path / "again", docs=60)
    for key in ("mmc4", "sft", "align", "text_sft"):
        assert Path(again[key]).read_bytes() == Path(converted[key]).read_bytes()


# ---------------------------------------------------------------------------------------------
# Streams


def test_record_list_and_jsonl_records_resume_exactly(converted):
    records = [{"i": i} for i in range(7)]
    stream = RecordList(records, seed=3)
    [next(stream) for _ in range(9)]  # into the second epoch
    state = stream.state_dict()
    expected = [next(stream)["i"] for _ in range(5)]
    again = RecordList(records, seed=3)
    again.load_state_dict(state)
    assert [next(again)["i"] for _ in range(5)] == expected
    ranks = [RecordList(records, seed=3, rank=r, world_size=2) for r in range(2)]
    union = sorted(next(ranks[r])["i"] for _ in range(3) for r in range(2)) + [next(ranks[0])["i"]]
    assert sorted(union) == list(range(7))  # two ranks split one epoch between them

    docs = JsonlRecords([converted["mmc4"]], seed=1)
    next(docs)
    state = docs.state_dict()
    expected = [next(docs)["url"] for _ in range(3)]
    docs = JsonlRecords([converted["mmc4"]], seed=1)
    docs.load_state_dict(state)
    assert [next(docs)["url"] for _ in range(3)] == expected


def test_joint_sft_draws_text_only_samples_at_the_configured_ratio(world, tmp_path):
    from harness.config import get_preset, resolve
    from train.vila.sft import SftTask
    from train.distributed import DistInfo
    import train.vila.config  # noqa: F401

    def share(ratio: float, joint: bool = True) -> float:
        cfg = resolve(get_preset("train/vila_sft", "mini"), overrides=[f"data.miniworld={world.root}", "init_from=random-init",
                                                                         f"data.text_ratio={ratio}", f"data.joint_sft={str(joint).lower()}"])
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=__import__("torch").device("cpu"), backend="gloo")
        stream = SftTask(cfg, tmp_path / "sft").build_samples(info)
        samples = [next(stream) for _ in range(400)]
        return sum(1 for s in samples if s is not None and not any(x.kind == "image" for x in s)) / len(samples)

    assert abs(share(0.2) - 0.2) < 0.06  # 400 draws: 3 standard deviations ~ 0.06
    assert abs(share(0.5) - 0.5) < 0.08
    assert share(0.5, joint=False) == 0.0


def test_sft_instructions_are_the_evaluation_prompts():
    """The mini SFT data teaches the instructions the VILA evaluation sends (eval/tasks.py), word for word."""
    from eval.tasks import SHORT_ANSWER, VILA_CAPTION
    from model.vila.data import CAPTION_PROMPT, VQA_SUFFIX

    assert CAPTION_PROMPT == VILA_CAPTION
    assert SHORT_ANSWER == "{text}\n" + VQA_SUFFIX


def test_mini_fewshot_demonstrations_are_written_as_the_worlds_documents_write_them(world, converted):
    """The mini k-shot tasks ask in the mini world's words (eval/fewshot.py MINI_VQA_TEMPLATE): a VQA demonstration
    is a sentence the interleaved documents contain verbatim, and no template word is one the corpora never use."""
    import re

    from eval.fewshot import MINI_CAPTION_TEMPLATE, MINI_VQA_TEMPLATE, VQA_TEMPLATE

    sentences = {s for line in Path(converted["mmc4"]).read_text().splitlines() for s in json.loads(line)["text_list"]}
    asked = [s for s in sentences if s.startswith("Question: ")]
    assert asked
    for sentence in asked:
        q, _, a = sentence[len("Question: "):].partition(" Answer: ")
        assert MINI_VQA_TEMPLATE.format(text=q, answer=a.removesuffix(".")).strip() == sentence
    corpus = " ".join(json.loads(l)["text"] for f in sorted((Path(world.root) / "text").glob("*.jsonl"))
                      for l in f.read_text().splitlines()).lower() + " " + " ".join(sentences).lower()  # fmt: skip
    words = lambda template: set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", template).lower()))  # noqa: E731
    assert words(MINI_VQA_TEMPLATE) | words(MINI_CAPTION_TEMPLATE) <= set(re.findall(r"[a-z]+", corpus))
    assert not words(VQA_TEMPLATE) <= set(re.findall(r"[a-z]+", corpus))  # OpenFlamingo's "short": why the mini template


def test_balanced_questions_finds_the_complement_of_a_rare_answer_and_skips_an_impossible_one():
    """One teal image among 400 red ones: "is there a teal shape?" -> "no" on a red image has its complement only
    there (rejection sampling alone misses it 78 % of the time in 100 draws); a question no image answers the other
    way is left unbalanced instead of failing."""
    import random

    from model.vila.data import MiniWorldImage, balanced_questions

    images = [MiniWorldImage(i, b"", [], [("is there a teal shape?", "no")] if i == 1 else []) for i in range(400)]
    images.append(MiniWorldImage(400, b"", [], [("is there a circle?", "yes")]))
    labels = {str(i): ["circle", "teal" if i == 399 else "red"] for i in range(401)}
    for seed in range(5):
        by_image = balanced_questions(images, labels, random.Random(seed))
        assert by_image[399] == [("is there a teal shape?", "yes")]
        assert by_image[400] == [("is there a circle?", "yes")]  # every image has a circle: nothing to pair it with
        assert sum(len(v) for v in by_image.values()) == 3
