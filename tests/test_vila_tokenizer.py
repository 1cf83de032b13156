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
from model.vila.data import IGNORE_INDEX, conversation_segments, conversation_turns, encode, layout

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


def _split_specials(text: str, specials: dict[str, int]) -> list[str]:
    return re.split("(" + "|".join(re.escape(t) for t in specials) + ")", text)


def release_pieces(processor, text: str, specials: dict[str, int] = SPECIALS) -> list[str]:
    """LlamaTokenizer(legacy=False).tokenize (transformers 4.36): "▁" + text, split on special tokens, pieces that
    start with "▁" encoded behind "<unk>" (whose pieces are dropped), others encoded as they are."""
    if not text:
        return []
    text = "\u2581" + text.replace("\u2581", " ")
    pieces: list[str] = []
    for part in _split_specials(text, specials):
        if part in specials:
            pieces.append(part)
        elif part.startswith(("\u2581", " ")):
            unk = len(processor.encode("<unk>", out_type=str))
            pieces += processor.encode("<unk>" + part, out_type=str)[unk:]
        elif part:
            pieces += processor.encode(part, out_type=str)
    if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in specials:
        pieces = pieces[1:]
    return pieces


def release_legacy_pieces(processor, text: str, specials: dict[str, int]) -> list[str]:
    """LlamaTokenizer(legacy=True).tokenize (what the release's "yi" branch loads: Yi's config has legacy=true):
    split on special tokens, every other piece encoded by the unmodified model, with its dummy prefix."""
    pieces: list[str] = []
    for part in _split_specials(text, specials):
        pieces += [part] if part in specials else processor.encode(part, out_type=str) if part else []
    return pieces


def release_ids(processor, text: str, bos: bool = True, specials: dict[str, int] = SPECIALS, legacy_processor=None) -> list[int]:
    """`tokenizer(text).input_ids`; `legacy_processor` (the unmodified model) for a legacy=True tokenizer."""
    if legacy_processor is not None:
        pieces = release_legacy_pieces(legacy_processor, text, specials)
    else:
        pieces = release_pieces(processor, text, specials)
    return ([1] if bos else []) + [specials[p] if p in specials else processor.piece_to_id(p) for p in pieces]


def release_tokenizer_image_token(processor, prompt: str, bos: bool = True, **kwargs) -> list[int]:
    """llava/mm_utils.py tokenizer_image_token: each chunk between <image>s tokenized (with <s> when the tokenizer
    adds one, which only the first chunk keeps); IMAGE between chunks."""
    chunks = [release_ids(processor, chunk, bos, **kwargs) for chunk in prompt.split("<image>")]
    out = chunks[0][:1] if bos else []
    for k, chunk in enumerate(chunks):
        if k:
            out.append(IMAGE)
        out += chunk[1:] if bos else chunk
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


# ---------------------------------------------------------------------------------------------
# Item 4: SFT labels of the VILA 1.5 templates hermes-2 (SeparatorStyle.MPT) and llama_3 (SeparatorStyle.LLAMA_3)

CHAT_SPECIALS = {t: 300 + k for k, t in enumerate(("<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                                                   "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"))}
THREE_TURNS = [("<image>\nwhat colour is it?", "It is red."), ("what shape?", "a circle"), ("and the colour?", "blue")]


def chat_tokenizer(released_folder, tmp_path, add_bos: bool, legacy: bool):
    """The fixture's LlamaTokenizer with the chat templates' tokens declared special in its folder (ids 300-305, as
    Nous-Hermes-2-Yi-34B's tokenizer_config.json declares <|im_start|>/<|im_end|>: special, never split)."""
    folder = tmp_path / f"chat_{add_bos}_{legacy}"
    shutil.copytree(released_folder, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(add_bos_token=add_bos, legacy=legacy, added_tokens_decoder=added_tokens_decoder(CHAT_SPECIALS))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return load_text_tokenizer(folder)


def added_tokens_decoder(tokens: dict[str, int], special: bool = True) -> dict[str, dict]:
    """tokenizer_config.json's `added_tokens_decoder` as transformers >= 4.34 writes it (<unk>, <s>, </s> first)."""
    entry = lambda t: {"content": t, "lstrip": False, "normalized": False, "rstrip": False,  # noqa: E731
                       "single_word": False, "special": special or t in SPECIALS}  # fmt: skip
    return {str(i): entry(t) for t, i in {**SPECIALS, **tokens}.items()}


def test_declared_chat_tokens_are_never_split_and_decode_back(released_folder, model_file, tmp_path):
    """A folder that declares <|im_start|>/<|im_end|> (Nous-Hermes-2-Yi-34B's) tokenizes them as one id each, at
    the declared ids, and the text between them as the release does; decoding skips them only when asked."""
    tokenizer = chat_tokenizer(released_folder, tmp_path, True, False)
    text = "<|im_start|>user\nwhat colour?<|im_end|><|im_start|>assistant\nIt is red.<|im_end|>"
    expected = release_ids(release_processor(model_file), text, specials={**SPECIALS, **CHAT_SPECIALS})
    assert tokenizer(text)["input_ids"] == expected
    assert expected.count(CHAT_SPECIALS["<|im_start|>"]) == 2 and len(tokenizer) == 306
    # (this model's normalizer reads "\n" as a space)
    assert tokenizer.decode(expected[1:]) == text.replace("\n", " ")
    assert tokenizer.decode(expected, skip_special_tokens=True) == "user what colour?assistant It is red."


def test_added_tokens_json_and_additional_special_tokens_are_registered(released_folder, tmp_path):
    """The older layout (added_tokens.json) and a config's additional_special_tokens: a non-special added token
    decodes as its text, a special one is skipped with skip_special_tokens."""
    folder = tmp_path / "older"
    shutil.copytree(released_folder, folder)
    (folder / "added_tokens.json").write_text(json.dumps({"<pad>": 300, "<|im_end|>": 301}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "additional_special_tokens": ["<|im_end|>"]}))
    tokenizer = load_text_tokenizer(folder)
    ids = tokenizer("red<pad>blue<|im_end|>", add_special_tokens=False)["input_ids"]
    assert 300 in ids and 301 in ids and len(tokenizer) == 302
    assert tokenizer.decode(ids, skip_special_tokens=True) == "red<pad>blue"


@pytest.mark.parametrize("declared, message", [
    ({"<|im_start|>": 305}, r"tokenizer_config.json: added token '<\|im_start\|>' is declared at id 305, but the "
                            r"tokenizer puts it at 300 \(tokenizer.model has 300 pieces\)"),
    ({"red": 301}, r"added token 'red' is declared at id 301, but the tokenizer puts it at \d+"),  # a piece's text
])  # fmt: skip
def test_an_added_token_declared_at_another_id_is_refused_by_name(released_folder, tmp_path, declared, message):
    from harness.errors import InputError

    folder = tmp_path / "renumbered"
    shutil.copytree(released_folder, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": added_tokens_decoder(declared)}))
    with pytest.raises(InputError, match=message):
        load_text_tokenizer(folder)


def release_preprocess_counted(style: str, conversation: str, max_len: int, tii) -> tuple[list[int], list[int]]:
    """llava/data/dataset.py (VILA branch vila1.5) preprocess_mpt / preprocess_llama_3 (has_image=True) on one
    prompt, `tii` its tokenizer_image_token: the prompt split at sep, regrouped into [system, user, gpt] and then
    [user, gpt] rounds; each round's part up to sep + the assistant role masked by its token count; the position
    advanced by count(round) + count(sep) (mpt) or count(round) + 1 (llama_3: "include <|eot_id|>"); every label
    dropped when the end is not the number of ids and lies below model_max_length."""
    sep = "<|im_end|>" if style == "mpt" else "<|end_of_text|>"
    role = "<|im_start|>assistant\n" if style == "mpt" else "<|start_header_id|>system<|end_header_id|>\n\n"
    ids = tii(conversation)
    labels = list(ids)
    pieces = conversation.split(sep)
    rounds = [sep.join(pieces[:3])] + [sep.join(pieces[i : i + 2]) for i in range(3, len(pieces), 2)]
    cur = 0
    for rou in rounds:
        if rou == "":
            break
        parts = rou.split(sep + role)
        if len(parts) != 2:
            break
        parts[0] += sep + role
        if style == "mpt":
            round_len = len(tii(rou)) + len(tii(sep))
            instruction_len = len(tii(parts[0]))
        else:
            round_len = len(tii(rou)) + 1
            instruction_len = len(tii(parts[0])) - 1 + 1
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur < max_len and cur != len(ids):
        labels = [IGNORE_INDEX] * len(ids)  # "WARNING: tokenization mismatch ... (ignored)"
    return ids, labels


def _chat_sample(tokenizer, name: str, turns, max_len: int = 4096):
    record = {"image": "x.png", "conversations": [m for q, a in turns for m in (
        {"from": "human", "value": q}, {"from": "gpt", "value": a})]}  # fmt: skip
    segments = conversation_segments(conversation_turns(record), get_template(name).prompt, "IMG")
    bos = 1 if tokenizer("")["input_ids"][:1] == [1] else None  # train/vila/common.py: <s> only if the tokenizer adds it
    return encode(segments, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], image_token_index=IMAGE,
                  tokens_per_image=4, bos_id=bos, eos_id=2, max_len=max_len, eos_text="</s>")  # fmt: skip


def _release_tii(model_file: str, add_bos: bool, legacy: bool):
    legacy_processor = spm.SentencePieceProcessor(model_file=model_file) if legacy else None
    processor = release_processor(model_file)
    return lambda s: release_tokenizer_image_token(processor, s, add_bos, specials={**SPECIALS, **CHAT_SPECIALS},
                                                   legacy_processor=legacy_processor)  # fmt: skip


@pytest.mark.parametrize("name, style, add_bos, legacy", [
    ("hermes-2", "mpt", False, True),  # VILA1.5-40B: Yi's tokenizer (add_bos_token false, legacy true)
    ("hermes-2", "mpt", True, False),  # a LLaMA-2-style tokenizer: the counts run 2 ahead per round
    ("llama_3", "llama_3", True, False),  # <s> added (as Llama-3's <|begin_of_text|>): 1 ahead per later round
    ("llama_3", "llama_3", False, False),
])  # fmt: skip
def test_sft_labels_of_hermes_2_and_llama_3_are_the_releases(released_folder, model_file, tmp_path, name, style, add_bos, legacy):
    tokenizer = chat_tokenizer(released_folder, tmp_path, add_bos, legacy)
    prompt = get_template(name).prompt(THREE_TURNS)
    ids, labels = release_preprocess_counted(style, prompt, 4096, _release_tii(model_file, add_bos, legacy))
    assert tokenize_with_images(prompt, tokenizer, IMAGE) == ids
    out = _chat_sample(tokenizer, name, THREE_TURNS)
    if add_bos:
        # the release's counts never reach the number of ids: every label is dropped, so we skip the sample
        assert set(labels) == {IGNORE_INDEX} and out is None
        return
    assert out.input_ids == ids
    assert out.labels == labels
    # the instruction's count ends inside the token "▁a" (the role's "\n" is a space to this model): the release
    # masks that token, the first of the second answer; the answers' other tokens and each <sep> are learnt
    supervised = tokenizer.decode([t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX])
    sep = "<|im_end|>" if name == "hermes-2" else "<|end_of_text|>"
    assert supervised.replace(" ", "") == f"Itisred.{sep}circle{sep}blue{sep}"


def test_llama_3_labels_of_a_sample_longer_than_max_len_keep_the_releases_shift(released_folder, model_file, tmp_path):
    """With <s> and model_max_length at most the release's count, the mismatch check is skipped and the labels of
    the second round stay shifted by one: its first answer token masked, the token after its separator learnt."""
    tokenizer = chat_tokenizer(released_folder, tmp_path, True, False)
    turns = THREE_TURNS[:2]
    prompt = get_template("llama_3").prompt(turns)
    tii = _release_tii(model_file, True, False)
    n = len(tii(prompt))
    ids, labels = release_preprocess_counted("llama_3", prompt, n + 1, tii)  # the count ends at n + 1
    out = _chat_sample(tokenizer, "llama_3", turns, max_len=n + 1)
    kept = n + 1 - 3  # max_len counts the image's 4 positions; the release cuts after expanding the image too
    assert out.input_ids == ids[:kept]
    assert out.labels == labels[:kept]
    full = _chat_sample(tokenizer, "llama_3", turns, max_len=n + 3)  # room for all: the mismatch check fires
    assert full is None


def test_hermes_2_record_ending_with_a_question_is_dropped_as_the_release_drops_it(released_folder, tmp_path):
    tokenizer = chat_tokenizer(released_folder, tmp_path, False, True)
    assert _chat_sample(tokenizer, "hermes-2", THREE_TURNS[:2]) is not None
    record = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour is it?"},
                                                  {"from": "gpt", "value": "It is red."},
                                                  {"from": "human", "value": "what shape?"}]}  # fmt: skip
    segments = conversation_segments(conversation_turns(record), get_template("hermes-2").prompt, "IMG")
    # the release renders the last question (role + text + <|im_end|>), cannot split that round, and ignores all
    assert layout(segments) == get_template("hermes-2").prompt([THREE_TURNS[0]]) + "<|im_start|>user\nwhat shape?<|im_end|>"
    out = encode(segments, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], image_token_index=IMAGE,
                 tokens_per_image=4, bos_id=None, eos_id=2, max_len=4096)  # fmt: skip
    assert out is None
