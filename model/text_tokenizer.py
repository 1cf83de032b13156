"""The text tokenizer of a LLaMA-style release, loaded from its folder (any family's loaders; LaVIT's
`language_model/`, and `eval/lm_adapter.py` for LLM folders that ship only `tokenizer.model`).

LaVIT's released code uses the slow `LlamaTokenizer` (`use_fast=False`, transformers 4.33, default legacy mode) on
SentencePiece's `tokenizer.model`, which is all a LLaMA-style release ships. The transformers we pin has no slow
LLaMA tokenizer, and its fast one cannot be built from `tokenizer.model` here (the conversion needs protobuf, and
the failure surfaces as a misleading tiktoken error). `LlamaSentencePieceTokenizer` is that slow tokenizer's
behaviour: the text is split on special tokens, each piece is encoded by SentencePiece itself (legacy mode: no
extra prefix handling), ids are the model's piece ids; `add_special_tokens` prepends <s>; decoding is
SentencePiece's. Pad = </s> and left padding, as the released code sets them.

`load_text_tokenizer(folder)`: `tokenizer.model` when present (what the release ran; `tokenizer_config.json`, if
any, may set add_bos_token / add_eos_token / the special tokens; legacy=false is refused), else a transformers
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


def _sentencepiece_class():
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class LlamaSentencePieceTokenizer(SentencePieceBackend):
        """Slow-LlamaTokenizer (legacy) behaviour over a SentencePiece model (see the module docstring)."""

        vocab_files_names = {"vocab_file": SENTENCEPIECE_FILE}
        model_input_names = ["input_ids", "attention_mask"]
        padding_side = "left"

        def __init__(self, vocab_file: str, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **kwargs):
            kwargs.setdefault("legacy", True)
            kwargs.setdefault("clean_up_tokenization_spaces", False)
            self._with_bos = bool(kwargs.pop("add_bos_token", True))  # LlamaTokenizer's defaults
            self._with_eos = bool(kwargs.pop("add_eos_token", False))
            super().__init__(
                vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, **kwargs
            )

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
            return "".join(pieces)

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
    if config.get("legacy") is False:
        # 4.33's non-legacy mode rewrites the SentencePiece model (no dummy prefix) and encodes differently after
        # special tokens; the released code runs with the default (legacy) unless this file says otherwise.
        raise InputError(f"{config_file}: legacy=false (non-legacy slow LlamaTokenizer) is not supported")
    options = {k: config[k] for k in ("add_bos_token", "add_eos_token") if k in config}
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


def load_text_tokenizer(folder: str | Path):
    folder = Path(folder)
    if (folder / SENTENCEPIECE_FILE).is_file():
        try:
            import sentencepiece  # noqa: F401 - a dependency; checked here for a clear message
        except ImportError as err:
            raise ImportError(
                f"{folder / SENTENCEPIECE_FILE} needs the sentencepiece package (pip install sentencepiece)"
            ) from err
        options = sentencepiece_options(folder / "tokenizer_config.json")
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
