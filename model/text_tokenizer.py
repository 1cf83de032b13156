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
The folder's added tokens are registered as the slow tokenizer registers them, so the text never splits them:
`tokenizer_config.json`'s `added_tokens_decoder` (transformers >= 4.34 writes it; Nous-Hermes-2-Yi-34B, VILA1.5-40B's
LLM, declares its chat tokens <|im_start|> / <|im_end|> there), `additional_special_tokens`, and the older
`added_tokens.json`. Each must land on the id the folder declares (a piece of `tokenizer.model` with that text, or the
next id past it); a token that would land elsewhere is refused by name (InputError), never renumbered silently.
`sentencepiece_only(folder)`: the folder has `tokenizer.model` but no `tokenizer.json` (where transformers'
`AutoTokenizer` fails and callers that otherwise use it must come here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import InputError

SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZERS_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"  # the settings and added tokens beside tokenizer.model
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
            # Added tokens past the SentencePiece vocabulary are not pieces SentencePiece can decode: their text.
            beyond = {i for i in self._added_tokens_decoder if i >= self.sp_model.get_piece_size()}
            pieces, run = [], []
            for i in token_ids:
                if i in special or i in beyond:
                    if skip_special_tokens and i in special:
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


def _read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{file} is not valid JSON: {err}") from err


def sentencepiece_options(config: dict, config_file: Path) -> dict:
    """The slow-LlamaTokenizer settings a release's tokenizer_config.json (`config`, read from `config_file`) may
    carry (missing keys: defaults)."""
    for key in ("legacy", "add_prefix_space", "add_bos_token", "add_eos_token"):
        if key in config and config[key] is not None and not isinstance(config[key], bool):
            raise InputError(f"{config_file}: {key}={config[key]!r}; expected true or false")
    # legacy: null is LlamaTokenizer's "not set" (its default, legacy mode); VILA's training saves legacy=false.
    options = {k: config[k] for k in ("legacy", "add_prefix_space", "add_bos_token", "add_eos_token") if config.get(k) is not None}
    for key in ("bos_token", "eos_token", "unk_token"):
        if _token_text(config.get(key)):
            options[key] = _token_text(config[key])
    return options


@dataclass(frozen=True)
class DeclaredToken:
    """One added token as a folder declares it: its text, its id (None: wherever it lands) and its flags."""

    content: str
    token_id: int | None
    special: bool
    source: Path
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    single_word: bool = False


def declared_added_tokens(folder: Path, config: dict) -> list[DeclaredToken]:
    """The added tokens a LLaMA-style folder declares (module docstring; `config` its tokenizer_config.json), in id
    order, unnumbered ones last."""
    declared: dict[str, DeclaredToken] = {}
    config_file = folder / CONFIG_FILE
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str) and str(key).isdigit()):
            raise InputError(f"{config_file}: added_tokens_decoder[{key!r}] = {entry!r}; expected an id and a token")
        flags = {k: bool(entry.get(k, False)) for k in ("lstrip", "rstrip", "normalized", "single_word")}
        declared[entry["content"]] = DeclaredToken(
            entry["content"], int(key), bool(entry.get("special", False)), config_file, **flags
        )
    legacy_file = folder / "added_tokens.json"  # transformers < 4.34: {"<token>": id}
    if legacy_file.is_file():
        for content, token_id in _read_json(legacy_file).items():
            if not isinstance(token_id, int):
                raise InputError(f"{legacy_file}: {content!r} -> {token_id!r}; expected an integer id")
            declared.setdefault(content, DeclaredToken(content, token_id, False, legacy_file))
    for token in config.get("additional_special_tokens") or []:
        content = _token_text(token)
        if content in declared:
            declared[content] = replace(declared[content], special=True)
        elif content:
            declared[content] = DeclaredToken(content, None, True, config_file)
    return sorted(declared.values(), key=lambda t: (t.token_id is None, t.token_id or 0))


def register_added_tokens(tokenizer, declared: list[DeclaredToken]) -> None:
    """Add each declared token; refuse by name one that does not land on its declared id."""
    from tokenizers import AddedToken

    for token in declared:
        added = AddedToken(
            token.content, lstrip=token.lstrip, rstrip=token.rstrip, normalized=token.normalized,
            single_word=token.single_word, special=token.special,
        )  # fmt: skip
        tokenizer.add_tokens([added], special_tokens=token.special)
        landed = tokenizer.convert_tokens_to_ids(token.content)
        if token.token_id is not None and landed != token.token_id:
            raise InputError(
                f"{token.source}: added token {token.content!r} is declared at id {token.token_id}, but the tokenizer "
                f"puts it at {landed} ({SENTENCEPIECE_FILE} has {tokenizer.vocab_size} pieces)"
            )


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
        config_file = folder / CONFIG_FILE
        config = _read_json(config_file) if config_file.is_file() else {}
        options = sentencepiece_options(config, config_file)
        if legacy is not None:
            options["legacy"] = legacy
        tokenizer = sentencepiece_tokenizer(folder / SENTENCEPIECE_FILE, **options)
        register_added_tokens(tokenizer, declared_added_tokens(folder, config))
        return tokenizer
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
