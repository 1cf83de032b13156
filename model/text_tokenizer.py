"""The text tokenizer of a LLaMA-style release, loaded from its folder (any family's loaders; LaVIT's
`language_model/`, VILA's LLM folder, and `eval/lm_adapter.py` for LLM folders that ship only `tokenizer.model`).

The released code of both families uses the slow `LlamaTokenizer` (`use_fast=False`) on SentencePiece's
`tokenizer.model`, which is all a LLaMA-style release ships. The transformers we pin has no slow LLaMA tokenizer,
and its fast one cannot be built from `tokenizer.model` here (the conversion needs protobuf, and the failure
surfaces as a misleading tiktoken error). `LlamaSentencePieceTokenizer` is that slow tokenizer's behaviour in its
two modes:

    legacy=True   (LaVIT: transformers 4.33, default mode) the text is split on special tokens and each piece is
                  encoded by SentencePiece itself, so a piece right after `</s>` gets SentencePiece's dummy prefix
                  ("</s>USER" -> "</s>", "▁USER").
    legacy=False  (VILA: `AutoTokenizer.from_pretrained(..., use_fast=False, legacy=False)` in llava/train/train.py
                  and llava/model/builder.py, transformers 4.36.2 -- the LlamaTokenizer VILA 1.5 ships as
                  llava/train/transformers_replace/models/llama/tokenization_llama.py): SentencePiece's dummy
                  prefix is switched off; `tokenize` puts one "▁" before the whole text instead, so only the start
                  of the text and pieces that begin with a space get a "▁" ("</s>USER" -> "</s>", "U", "SER" with a
                  vocabulary that has no "USER" piece).

Ids are the model's piece ids; `add_special_tokens` prepends <s>; pad = </s> and left padding, as LaVIT's released
code sets them (VILA's loaders set their own).

`load_text_tokenizer(folder, legacy=None)`: `tokenizer.model` when present (what the releases ran;
`tokenizer_config.json`, if any, may set add_bos_token / add_eos_token / legacy / add_prefix_space / the special
tokens; `legacy=` overrides the file, as a keyword of the released `from_pretrained` call does), else a transformers
tokenizer (`tokenizer.json`); neither -> FileNotFoundError naming the folder and the files looked for.
`sentencepiece_only(folder)`: the folder has `tokenizer.model` but no `tokenizer.json` (where transformers'
`AutoTokenizer` fails and callers that otherwise use it must come here).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import InputError

SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZERS_FILE = "tokenizer.json"
SPIECE_UNDERLINE = "\u2581"  # "▁", SentencePiece's word-start mark
# A serialized `ModelProto` field 3 (normalizer_spec) holding only `add_dummy_prefix` (its field 3) = false. Protobuf
# merges a repeated singular message field into the earlier one, so appending this to a model is exactly
# `model.normalizer_spec.MergeFrom(NormalizerSpec(add_dummy_prefix=False))` of the non-legacy LlamaTokenizer's
# `get_spm_processor`, without the protobuf package (which the pinned environment does not have).
_NO_DUMMY_PREFIX = bytes([0x1A, 0x02, 0x18, 0x00])


def without_dummy_prefix(processor):
    """A copy of a SentencePieceProcessor whose normalizer adds no "▁" before the text (the non-legacy model)."""
    import sentencepiece

    out = sentencepiece.SentencePieceProcessor()
    out.LoadFromSerializedProto(processor.serialized_model_proto() + _NO_DUMMY_PREFIX)
    return out


def _sentencepiece_class():
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class LlamaSentencePieceTokenizer(SentencePieceBackend):
        """Slow-LlamaTokenizer behaviour over a SentencePiece model, legacy or not (see the module docstring)."""

        vocab_files_names = {"vocab_file": SENTENCEPIECE_FILE}
        model_input_names = ["input_ids", "attention_mask"]
        padding_side = "left"

        def __init__(self, vocab_file: str, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **kwargs):
            legacy = bool(kwargs.pop("legacy", True))
            kwargs.setdefault("clean_up_tokenization_spaces", False)
            self._with_bos = bool(kwargs.pop("add_bos_token", True))  # LlamaTokenizer's defaults
            self._with_eos = bool(kwargs.pop("add_eos_token", False))
            # The released non-legacy tokenizer puts "▁" before the text (its `add_prefix_space`, default True).
            self.add_prefix_space = bool(kwargs.pop("add_prefix_space", True))
            # The backend's own non-legacy switch needs protobuf: build it legacy, then swap the model ourselves.
            super().__init__(
                vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, legacy=True,
                **kwargs,
            )
            self.legacy = legacy
            self.init_kwargs["legacy"] = legacy
            if not legacy:
                self.sp_model = without_dummy_prefix(self.sp_model)

        # -- encoding: LlamaTokenizer.tokenize / _tokenize of transformers 4.36 (legacy: the plain backend) --
        def tokenize(self, text, **kwargs):
            if self.legacy or len(text) == 0:
                return super().tokenize(text, **kwargs)
            # One "▁" before the whole text replaces SentencePiece's per-piece dummy prefix, so a piece that follows
            # a special token starts without one (unless the text itself has a space there).
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text = SPIECE_UNDERLINE + text
            tokens = super().tokenize(text, **kwargs)
            if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
                tokens = tokens[1:]  # "▁<s>..." -> "<s>...": no lone "▁" before a leading special token
            return tokens

        def _tokenize(self, text, **kwargs):
            if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
                return self.sp_model.encode(text, out_type=str)
            # Without the dummy prefix SentencePiece drops a leading "▁"; the release keeps it by encoding behind
            # the unk token's text and removing that token's pieces again.
            unk = str(self.unk_token)
            tokens = self.sp_model.encode(unk + text, out_type=str)
            unk_length = len(self.sp_model.encode(unk))
            return tokens[unk_length:] if len(tokens) >= unk_length else tokens

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self._with_bos else []
            eos = [self.eos_token_id] if self._with_eos else []
            out = bos + list(token_ids_0) + eos
            return out if token_ids_1 is None else out + bos + list(token_ids_1) + eos

        def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
            if isinstance(token_ids, int):
                token_ids = [token_ids]
            special = set(self.all_special_ids)
            pieces, run = [], []
            for i in token_ids:
                if i in special:
                    if skip_special_tokens:
                        continue
                    pieces.append(self.sp_model.decode(run))
                    pieces.append(self.convert_ids_to_tokens(i))
                    run = []
                else:
                    run.append(int(i))
            pieces.append(self.sp_model.decode(run))
            text = "".join(pieces)
            if not self.legacy and self.add_prefix_space and text.startswith(" "):
                # The non-legacy `convert_tokens_to_string` drops the "▁" its `tokenize` put before the text.
                text = text[1:]
            return text

    return LlamaSentencePieceTokenizer


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts ({"content": ...})."""
    return value.get("content") if isinstance(value, dict) else value


def sentencepiece_options(config_file: Path) -> dict:
    """The slow-LlamaTokenizer settings a release's tokenizer_config.json may carry (missing keys: defaults)."""
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_file} is not valid JSON: {err}") from err
    for key in ("legacy", "add_prefix_space", "add_bos_token", "add_eos_token"):
        if key in config and config[key] is not None and not isinstance(config[key], bool):
            raise InputError(f"{config_file}: {key}={config[key]!r}; expected true or false")
    # legacy: null is LlamaTokenizer's "not set" (its default, legacy mode); VILA's training saves legacy=false.
    options = {k: config[k] for k in ("legacy", "add_prefix_space", "add_bos_token", "add_eos_token") if config.get(k) is not None}
    for key in ("bos_token", "eos_token", "unk_token"):
        if _token_text(config.get(key)):
            options[key] = _token_text(config[key])
    return options


def sentencepiece_tokenizer(model_file: str | Path, **options):
    """The slow-LlamaTokenizer-equivalent tokenizer over a SentencePiece model file."""
    tokenizer = _sentencepiece_class()(vocab_file=str(model_file), **options)
    tokenizer.pad_token = tokenizer.eos_token  # released: pad = eos
    tokenizer.padding_side = "left"
    return tokenizer


def sentencepiece_only(folder: str | Path) -> bool:
    """`tokenizer.model` without a `tokenizer.json`: only this module can load the folder's tokenizer."""
    folder = Path(folder)
    return (folder / SENTENCEPIECE_FILE).is_file() and not (folder / TOKENIZERS_FILE).is_file()


def load_text_tokenizer(folder: str | Path, legacy: bool | None = None):
    """The folder's tokenizer (module docstring); `legacy` (SentencePiece folders only) overrides the config's."""
    folder = Path(folder)
    if (folder / SENTENCEPIECE_FILE).is_file():
        try:
            import sentencepiece  # noqa: F401 - a dependency; checked here for a clear message
        except ImportError as err:
            raise ImportError(
                f"{folder / SENTENCEPIECE_FILE} needs the sentencepiece package (pip install sentencepiece)"
            ) from err
        options = sentencepiece_options(folder / "tokenizer_config.json")
        if legacy is not None:
            options["legacy"] = legacy
        return sentencepiece_tokenizer(folder / SENTENCEPIECE_FILE, **options)
    if not (folder / TOKENIZERS_FILE).is_file():
        raise FileNotFoundError(
            f"no text tokenizer in {folder}: looked for {SENTENCEPIECE_FILE} (SentencePiece) and {TOKENIZERS_FILE}"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - re-raised with the folder named
        raise FileNotFoundError(f"could not load the text tokenizer {folder / TOKENIZERS_FILE}: {err}") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # released: pad = eos
    return tokenizer
