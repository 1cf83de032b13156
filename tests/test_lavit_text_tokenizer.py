"""A release whose language_model/ ships only SentencePiece's tokenizer.model: our tokenizer gives the ids of the
slow LlamaTokenizer the released code used (legacy mode: split on special tokens, SentencePiece encodes each
piece), the whole checkpoint loads and runs from it, and a missing tokenizer is a one-line error."""

from __future__ import annotations

import hashlib
import json
import random
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lavit.configuration import lavit_tiny
from model.lavit.checkpoints import load_for_eval
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.official import load_official_lavit, write_official_layout
from model.text_tokenizer import load_text_tokenizer, sentencepiece_tokenizer
from model.lavit.vocabulary import build_byte_text_tokenizer

spm = pytest.importorskip("sentencepiece")

WORDS = "a photo of the cat dog sitting on couch red blue what is color question answer man woman riding horse street"


def train_sentencepiece(folder) -> str:
    """A 400-piece LLaMA-style model (BPE, byte fallback, <unk>=0 <s>=1 </s>=2) from a generated text file."""
    rng = random.Random(0)
    words = WORDS.split()
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)))
    prefix = folder / "tok"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=400,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return str(prefix) + ".model"


@pytest.fixture(scope="module")
def sp_model_file(tmp_path_factory) -> str:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"))


def slow_llama_ids(processor, text: str, add_bos: bool) -> list[int]:
    """The slow LlamaTokenizer (transformers 4.33, legacy) written out: split on <unk> <s> </s>, encode each piece
    with SentencePiece, special tokens as their ids, <s> first with add_special_tokens."""
    import re

    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    ids = [1] if add_bos else []
    for part in re.split("(<unk>|<s>|</s>)", text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids += processor.encode(part)
    return ids


# Ids from transformers 4.33.2's slow LlamaTokenizer (LlamaTokenizer.from_pretrained(folder, use_fast=False), default
# legacy mode, as released) on the model `train_sentencepiece` makes with sentencepiece 0.2.3, recorded once in a
# side environment; compared only when the trained vocabulary is that one (`vocabulary_digest`).
SLOW_433_VOCABULARY = "46d060924432351a6d16a41bc6ba2d5b481644509fef01f24c53bc3d478ce115"
SLOW_433_IDS = {
    "A photo, of 7 cats!": [1, 379, 68, 300, 47, 318, 379, 58, 293, 385, 36],
    "Question: what is the color? Answer:": [1, 379, 84, 329, 328, 61, 306, 295, 281, 283, 66, 379, 68, 383, 319, 61],
    "ünïcode 中文 </s> x":
        [1, 379, 198, 191, 383, 198, 178, 333, 393, 382, 379, 231, 187, 176, 233, 153, 138, 2, 379, 123],
    "<s>hi</s>": [1, 1, 273, 386, 2],
    'Is the question: "what is this" answerable?':
        [1, 379, 76, 385, 281, 331, 61, 379, 37, 392, 305, 295, 280, 388, 294, 37, 320, 387, 276, 382, 66],
}  # fmt: skip


def vocabulary_digest(processor) -> str:
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return hashlib.sha256(repr(pieces).encode()).hexdigest()


TEXTS = [
    "A photo, of 7 cats!",
    "Question: what is the color? Answer:",
    "  two  spaces",
    "",
    "ünïcode 中文 </s> x",
    "<s>hi</s>",
    " leading space",
    "tabs\tand\nnewlines",
    'Is the question: "what is this" answerable?',
]


def test_ids_equal_the_slow_llama_tokenizer(sp_model_file):
    ours = sentencepiece_tokenizer(sp_model_file)
    processor = spm.SentencePieceProcessor(model_file=sp_model_file)
    for text in TEXTS:
        assert ours(text, add_special_tokens=False)["input_ids"] == slow_llama_ids(processor, text, False), text
        assert ours(text)["input_ids"] == slow_llama_ids(processor, text, True), text
    digest = vocabulary_digest(processor)
    if digest != SLOW_433_VOCABULARY:
        pytest.skip(f"this sentencepiece trained another vocabulary ({digest[:12]}) than the 4.33 ids were recorded on")
    for text, ids in SLOW_433_IDS.items():
        assert ours(text)["input_ids"] == ids, text


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz ,.?!:'\"\n\tüé中7")) , max_size=40))
def test_ids_and_decoding_agree_with_sentencepiece(sp_model_file, text):
    ours = sentencepiece_tokenizer(sp_model_file)
    processor = spm.SentencePieceProcessor(model_file=sp_model_file)
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert ids == processor.encode(text)
    assert ours.decode([1] + ids + [2], skip_special_tokens=True) == processor.decode(ids)


def test_padding_is_left_with_eos(sp_model_file):
    ours = sentencepiece_tokenizer(sp_model_file)
    short = ours("a cat", add_special_tokens=False)["input_ids"]
    long = ours("a photo of the dog", add_special_tokens=False)["input_ids"]
    batch = ours(["a cat", "a photo of the dog"], padding="longest", add_special_tokens=False)
    pad = len(long) - len(short)
    assert pad > 0
    assert batch["input_ids"] == [[2] * pad + short, long]  # released: pad = </s>, on the left
    assert batch["attention_mask"] == [[0] * pad + [1] * len(short), [1] * len(long)]


@pytest.fixture(scope="module")
def sentencepiece_release(tmp_path_factory, sp_model_file):
    """A tiny release whose language_model/ has tokenizer.model and no other tokenizer file."""
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    root = write_official_layout(model, build_byte_text_tokenizer(), tmp_path_factory.mktemp("rel") / "LaVIT-spm")
    lm = root / "language_model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (lm / name).unlink(missing_ok=True)
    shutil.copy(sp_model_file, lm / "tokenizer.model")
    return model, root


def test_release_loads_from_tokenizer_model_alone(sentencepiece_release, sp_model_file):
    model, root = sentencepiece_release
    lm = root / "language_model"
    assert sorted(p.name for p in lm.iterdir() if "token" in p.name) == ["tokenizer.model"]
    loaded = load_official_lavit(root, lavit_tiny())
    processor = spm.SentencePieceProcessor(model_file=sp_model_file)
    prompt = "Question: what color is the cat? Answer:"
    assert loaded.text_tokenizer(prompt, add_special_tokens=False)["input_ids"] == processor.encode(prompt)
    runner = load_for_eval(root, config=lavit_tiny()).adapter  # the lavit family's loader, as `python -m eval`
    # The tiny LLM keeps LLaMA's 32000 text ids; this SentencePiece model has 400: keep generation inside them.
    outside = torch.zeros(runner.model.vocab.size)
    outside[processor.get_piece_size() :] = -1e4
    runner.model.language_model.lm_head.register_forward_hook(lambda m, i, o: o + outside.to(o.dtype))
    from PIL import Image

    image = Image.new("RGB", (32, 32), (120, 30, 200))
    text = {"num_beams": 2, "min_new_tokens": 2, "length_penalty": 1.0, "early_stopping": False,
            "decoding": "released", "selection": "argmax"}  # fmt: skip
    captions = runner.caption([image], "", **text, max_new_tokens=6)
    answers = runner.answer([image], [prompt], **text, max_new_tokens=4, lemmatize=False)
    assert len(captions) == len(answers) == 1 and all(isinstance(t, str) for t in captions + answers)


def test_missing_tokenizer_is_one_line_naming_folder_and_files(sentencepiece_release, tmp_path):
    _, root = sentencepiece_release
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "language_model" / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_official_lavit(broken, lavit_tiny())
    message = str(err.value)
    assert "\n" not in message
    assert str(broken / "language_model") in message
    assert "tokenizer.model" in message and "tokenizer.json" in message
    with pytest.raises(FileNotFoundError, match="looked for tokenizer.model"):
        load_text_tokenizer(broken / "language_model")


def test_tokenizer_config_options(sp_model_file, tmp_path):
    folder = tmp_path / "language_model"
    folder.mkdir()
    shutil.copy(sp_model_file, folder / "tokenizer.model")
    assert load_text_tokenizer(folder)("a cat")["input_ids"][0] == 1  # no config: <s> first, as LlamaTokenizer
    config = {"add_bos_token": False, "add_eos_token": True, "bos_token": {"content": "<s>", "lstrip": False}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_text_tokenizer(folder)
    ids = tokenizer("a cat")["input_ids"]
    assert ids[0] != 1 and ids[-1] == 2
    # legacy=false (what VILA's training saves) is honoured: non-legacy encoding (tests/test_vila_tokenizer.py)
    (folder / "tokenizer_config.json").write_text(json.dumps({"legacy": False}))
    assert load_text_tokenizer(folder).legacy is False
    (folder / "tokenizer_config.json").write_text(json.dumps({"legacy": None}))
    assert load_text_tokenizer(folder).legacy is True  # null: LlamaTokenizer's default (legacy), as LaVIT ran it


def test_other_loaders_read_a_tokenizer_model_only_folder(sp_model_file, tmp_path):
    """The unified stage's text tokenizer and lm-eval's LLM folders go through the same loader when a folder has
    only tokenizer.model (transformers' AutoTokenizer cannot load it)."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from eval.lm_adapter import _load_llm_folder
    from train.lavit.unified import UnifiedTask
    from model.text_tokenizer import sentencepiece_only

    processor = spm.SentencePieceProcessor(model_file=sp_model_file)
    text = "a photo of the red cat"
    folder = tmp_path / "llm"
    folder.mkdir()
    shutil.copy(sp_model_file, folder / "tokenizer.model")
    assert sentencepiece_only(folder)
    stage_tokenizer = UnifiedTask._text_tokenizer(SimpleNamespace(cfg=SimpleNamespace(text_tokenizer=str(folder))))
    assert stage_tokenizer(text, add_special_tokens=False)["input_ids"] == processor.encode(text)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    model, tokenizer = _load_llm_folder(folder, [folder], "float32", "test")
    assert tokenizer(text)["input_ids"] == [1] + processor.encode(text)  # <s> first, as LlamaTokenizer
    assert model.config.vocab_size == 400
    (folder / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer \(tokenizer_config.json / tokenizer.json / tokenizer.model\)"):
        _load_llm_folder(folder, [folder], "float32", "test")
