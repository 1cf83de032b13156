"""VILA's text tokenization against the released code, re-derived here independently of model/text_tokenizer.py:

- the LlamaTokenizer VILA runs (`AutoTokenizer.from_pretrained(path, use_fast=False, legacy=False)` in VILA v1.0
  llava/train/train.py and llava/model/builder.py; transformers 4.36.2, whose class VILA 1.5 ships as
  llava/train/transformers_replace/models/llama/tokenization_llama.py): `get_spm_processor` switches the
  SentencePiece model's `add_dummy_prefix` off, `tokenize` puts one "▁" before the text, `_tokenize` encodes a piece
  that starts with "▁"/" " behind "<unk>" and drops the unk pieces again;
- `tokenizer_image_token` (llava/mm_utils.py) and `preprocess_v1` (llava/data/dataset.py, VILA v1.0): the whole
  conversation tokenized at once, the instruction parts masked by lengths.

The SentencePiece model is trained here, LLaMA-like (BPE, byte fallback, no whitespace folding), with "USER" a
user-defined piece: like LLaMA's vocabulary (where "USER" is one piece and "▁USER" two), the unprefixed form is one
token shorter, which is what `preprocess_v1`'s `round_len - 1` for later rounds assumes."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest

from model.text_tokenizer import load_text_tokenizer
from model.vila.conversation import get_template, tokenize_with_images
from model.vila.data import IGNORE_INDEX, conversation_segments, conversation_turns, encode

spm = pytest.importorskip("sentencepiece")

WORDS = ("a photo of the red blue green cat dog circle square triangle what colour shape is it this image "
         "chat between curious user and an artificial intelligence assistant ASSISTANT gives helpful answers").split()
SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
IMAGE = -200


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vila_spm")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    lines += ["USER: what is it? ASSISTANT: It is red." for _ in range(200)]
    (folder / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tok"), vocab_size=300, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        remove_extra_whitespaces=False, user_defined_symbols=["USER"], num_threads=1, minloglevel=2,
    )  # fmt: skip
    return str(folder / "tok.model")


# ---------------------------------------------------------------------------------------------
# The release, re-derived


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if byte < 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf: bytes):
    """(field number, wire type, the field's raw bytes, its payload) of a serialized protobuf message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
            payload = None
        elif wire == 2:
            size, i = _varint(buf, i)
            payload, i = buf[i : i + size], i + size
        elif wire == 5:
            i, payload = i + 4, None
        elif wire == 1:
            i, payload = i + 8, None
        else:
            raise AssertionError(f"wire type {wire}")
        yield number, wire, buf[start:i], payload


def release_processor(model_file: str):
    """LlamaTokenizer.get_spm_processor with legacy=False: ModelProto.normalizer_spec (field 3) rewritten with
    add_dummy_prefix (its field 3) = false; every other field kept."""
    raw = open(model_file, "rb").read()
    out = bytearray()
    for number, wire, field, payload in _fields(raw):
        if number == 3 and wire == 2:
            spec = b"".join(f for n, _, f, _ in _fields(payload) if n != 3) + bytes([0x18, 0x00])
            out += bytes([0x1A]) + _encode_varint(len(spec)) + spec
        else:
            out += field
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(bytes(out))
    return processor


def release_pieces(processor, text: str) -> list[str]:
    """LlamaTokenizer(legacy=False).tokenize (transformers 4.36): "▁" + text, split on special tokens, pieces that
    start with "▁" encoded behind "<unk>" (whose pieces are dropped), others encoded as they are."""
    if not text:
        return []
    text = "\u2581" + text.replace("\u2581", " ")
    pieces: list[str] = []
    for part in re.split("(<unk>|<s>|</s>)", text):
        if part in SPECIALS:
            pieces.append(part)
        elif part.startswith(("\u2581", " ")):
            unk = len(processor.encode("<unk>", out_type=str))
            pieces += processor.encode("<unk>" + part, out_type=str)[unk:]
        elif part:
            pieces += processor.encode(part, out_type=str)
    if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in SPECIALS:
        pieces = pieces[1:]
    return pieces


def release_ids(processor, text: str, bos: bool = True) -> list[int]:
    ids = [SPECIALS[p] if p in SPECIALS else processor.piece_to_id(p) for p in release_pieces(processor, text)]
    return ([1] if bos else []) + ids


def release_tokenizer_image_token(processor, prompt: str) -> list[int]:
    """llava/mm_utils.py tokenizer_image_token: each chunk between <image>s tokenized with <s>, which only the
    first keeps; IMAGE between chunks."""
    chunks = [release_ids(processor, chunk) for chunk in prompt.split("<image>")]
    out = [chunks[0][0]]
    for k, chunk in enumerate(chunks):
        if k:
            out.append(IMAGE)
        out += chunk[1:]
    return out


def release_preprocess_v1(processor, conversation: str) -> tuple[list[int], list[int]]:
    """llava/data/dataset.py preprocess_v1 (has_image=True) on one prompt: the ids, and labels with the
    instruction of each round masked by lengths (its -2 / -1 corrections for <s>, the trailing "▁" of
    "ASSISTANT: " and the "▁" that a round after "</s>" loses)."""
    ids = release_tokenizer_image_token(processor, conversation)
    labels = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * cur
    for i, rou in enumerate(conversation.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(release_tokenizer_image_token(processor, rou))
        instruction_len = len(release_tokenizer_image_token(processor, parts[0])) - 2
        if i > 0:
            round_len -= 1
            instruction_len -= 1
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    assert cur == len(ids), "the release would report a tokenization mismatch and drop every label"
    return ids, labels


# ---------------------------------------------------------------------------------------------
# Item 1: the tokenizer folder VILA's training saves


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory, model_file):
    """An LLM folder as VILA's training writes it: tokenizer.model + the LlamaTokenizer(legacy=False) config."""
    folder = tmp_path_factory.mktemp("vila_llm")
    shutil.copy(model_file, folder / "tokenizer.model")
    token = lambda t: {"__type": "AddedToken", "content": t, "lstrip": False, "normalized": False,  # noqa: E731
                       "rstrip": False, "single_word": False}  # fmt: skip
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"), "eos_token": token("</s>"),
              "unk_token": token("<unk>"), "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
              "model_max_length": 4096, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_released_legacy_false_tokenizer_loads_and_is_non_legacy(released_folder, model_file):
    tokenizer = load_text_tokenizer(released_folder)
    assert tokenizer.legacy is False
    processor = release_processor(model_file)
    for text in ["It is red.", "a cat</s>USER: what colour?", " leading", "<s>USER: hi", "two  spaces \n x"]:
        assert tokenizer(text)["input_ids"] == release_ids(processor, text), text
    # the caller's keyword wins over the file, as in the released from_pretrained(..., legacy=False) call
    assert load_text_tokenizer(released_folder, legacy=True).legacy is True


def test_tokenizer_config_with_a_non_boolean_legacy_is_refused(released_folder, tmp_path):
    from harness.errors import InputError

    folder = tmp_path / "llm"
    shutil.copytree(released_folder, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"legacy": "no"}))
    with pytest.raises(InputError, match=r"tokenizer_config.json: legacy='no'"):
        load_text_tokenizer(folder)


# ---------------------------------------------------------------------------------------------
# Item 2: the text after a special token


def test_text_after_a_special_token_gets_no_dummy_prefix(released_folder, model_file):
    non_legacy = load_text_tokenizer(released_folder)
    legacy = load_text_tokenizer(released_folder, legacy=True)
    text = "It is red.</s>USER: what shape?"
    pieces = non_legacy.tokenize(text)
    # transformers 4.36 LlamaTokenizer(legacy=False): "▁" only at the start, "USER" right after </s> unprefixed
    assert pieces[0].startswith("\u2581")
    assert pieces[pieces.index("</s>") + 1 :][:2] == ["USER", ":"]
    # the legacy tokenizer (LaVIT's) encodes the piece after </s> with SentencePiece's dummy prefix
    assert legacy.tokenize(text)[legacy.tokenize(text).index("</s>") + 1 :][:2] == ["\u2581", "USER"]
    assert pieces == release_pieces(release_processor(model_file), text)


@pytest.mark.parametrize("text", [
    "A chat between a curious user and an artificial intelligence assistant. USER: <image>\nwhat colour is it? "
    "ASSISTANT: It is red.</s>USER: what shape? ASSISTANT:",
    "[INST] <<SYS>>\nyou\n<</SYS>>\n\nwhat? [/INST] red </s><s>[INST] shape? [/INST]",
    "<image>a red circle\n",
])  # fmt: skip
def test_prompts_tokenize_as_tokenizer_image_token(released_folder, model_file, text):
    tokenizer = load_text_tokenizer(released_folder)
    assert tokenize_with_images(text, tokenizer, IMAGE) == release_tokenizer_image_token(release_processor(model_file), text)


def test_decoding_drops_the_added_prefix(released_folder):
    tokenizer = load_text_tokenizer(released_folder)
    ids = tokenizer("It is red.")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "It is red."


# ---------------------------------------------------------------------------------------------
# Item 3: SFT labels of a two-turn conversation


def test_sft_labels_of_a_two_turn_conversation_are_preprocess_v1s(released_folder, model_file):
    tokenizer = load_text_tokenizer(released_folder)
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is it?"}, {"from": "gpt", "value": "It is red."},
        {"from": "human", "value": "what shape?"}, {"from": "gpt", "value": "a circle"}]}  # fmt: skip
    template = get_template("vicuna_v1")
    segments = conversation_segments(conversation_turns(record), template.prompt, "IMG")
    out = encode(segments, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], image_token_index=IMAGE,
                 tokens_per_image=4, bos_id=1, eos_id=2, max_len=4096, eos_text="</s>")  # fmt: skip
    prompt = template.prompt([("<image>\nwhat colour is it?", "It is red."), ("what shape?", "a circle")])
    ids, labels = release_preprocess_v1(release_processor(model_file), prompt)
    assert out.input_ids == ids
    assert out.labels == labels
    # the supervised tokens are the two answers and their </s>; an answer tokenized on its own would differ
    supervised = [t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX]
    answer = supervised[: supervised.index(2)]
    assert answer != tokenizer(" It is red.", add_special_tokens=False)["input_ids"]
    assert supervised.count(2) == 2 and tokenizer.decode(supervised) == "It is red.</s> a circle</s>"


def release_preprocess_llama_2(processor, conversation: str) -> tuple[list[int], list[int]]:
    """llava/data/dataset.py preprocess_llama_2 (has_image=True, not mistral) on one prompt: rounds split at "</s>",
    the instruction up to "[/INST] " masked by its length - 2, no correction for later rounds."""
    ids = release_tokenizer_image_token(processor, conversation)
    labels = list(ids)
    sep = "[/INST] "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * cur
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(release_tokenizer_image_token(processor, rou))
        instruction_len = len(release_tokenizer_image_token(processor, parts[0])) - 2
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    assert cur == len(ids), "the release would report a tokenization mismatch and drop every label"
    return ids, labels


def test_sft_labels_of_a_two_turn_llava_llama_2_conversation_are_preprocess_llama_2s(released_folder, model_file):
    tokenizer = load_text_tokenizer(released_folder)
    turns = [("<image>\nwhat colour is it?", "It is red."), ("what shape?", "a circle")]
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": turns[0][0]}, {"from": "gpt", "value": turns[0][1]},
        {"from": "human", "value": turns[1][0]}, {"from": "gpt", "value": turns[1][1]}]}  # fmt: skip
    template = get_template("llava_llama_2")
    segments = conversation_segments(conversation_turns(record), template.prompt, "IMG")
    out = encode(segments, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], image_token_index=IMAGE,
                 tokens_per_image=4, bos_id=1, eos_id=2, max_len=4096, eos_text="</s>")  # fmt: skip
    ids, labels = release_preprocess_llama_2(release_processor(model_file), template.prompt(turns))
    assert out.input_ids == ids
    assert out.labels == labels


def test_plain_caption_labels_are_preprocess_plains(released_folder, model_file):
    """preprocess_plain: "<image>" + caption + "\\n", everything but the tokens of "<image>" (<s>, the image)
    supervised."""
    tokenizer = load_text_tokenizer(released_folder)
    record = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                  {"from": "gpt", "value": "a red circle"}]}  # fmt: skip
    segments = conversation_segments(conversation_turns(record), get_template("plain").prompt, "IMG")
    out = encode(segments, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], image_token_index=IMAGE,
                 tokens_per_image=4, bos_id=1, eos_id=2, max_len=4096, eos_text="</s>")  # fmt: skip
    processor = release_processor(model_file)
    ids = release_tokenizer_image_token(processor, "<image>a red circle\n")
    masked = len(release_tokenizer_image_token(processor, "<image>"))
    assert out.input_ids == ids
    assert out.labels == [IGNORE_INDEX] * masked + ids[masked:]
