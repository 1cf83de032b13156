"""LaVIT's unified vocabulary: text ids, the two image delimiters, then one id per visual code.

Released layout (paper: LLaMA's 32000 text ids + 2 + K = 16384 codes = 48386):

    0 .. 31999            text (SentencePiece; 0 <unk>, 1 <s>, 2 </s>)
    32000                 [IMG]   (image start)
    32001                 [/IMG]  (image end)
    32002 + k             visual code k, k in [0, K)

Also here: `build_byte_text_tokenizer`, a byte-level text tokenizer with LLaMA's special-token ids. The real
LLaMA SentencePiece model comes from a checkpoint's `language_model/` folder; this one exists so that tests and
the tiny preset can tokenize and decode text offline, through the same `PreTrainedTokenizerFast` interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LavitVocabulary:
    text_vocab_size: int = 32000  # ids below this are text
    codebook_size: int = 16384  # K visual codes

    @property
    def img_start_id(self) -> int:
        return self.text_vocab_size

    @property
    def img_end_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def visual_offset(self) -> int:
        """Id of visual code 0."""
        return self.text_vocab_size + 2

    @property
    def size(self) -> int:
        return self.visual_offset + self.codebook_size

    def code_to_id(self, codes: torch.Tensor) -> torch.Tensor:
        """Visual codes k -> LLM ids 32002 + k (checks the range)."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"visual codes must lie in [0, {self.codebook_size}), got min {int(codes.min())} max {int(codes.max())}"
            )
        return codes.long() + self.visual_offset

    def id_to_code(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM ids -> visual codes; raises on any non-visual id."""
        if ids.numel() and not bool(self.is_visual(ids).all()):
            bad = ids[~self.is_visual(ids)].unique().tolist()[:8]
            raise ValueError(f"ids {bad} are not visual ids (visual ids are [{self.visual_offset}, {self.size}))")
        return ids.long() - self.visual_offset

    def is_visual(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.visual_offset) & (ids < self.size)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= 0) & (ids < self.text_vocab_size)

    def non_text_ids(self) -> list[int]:
        """Ids suppressed when decoding text: [IMG], [/IMG] and every visual id (released: range(32000, 48386))."""
        return list(range(self.text_vocab_size, self.size))

    def text_ids(self) -> list[int]:
        """Ids suppressed when sampling an image. The released code suppresses range(3, 32000) and leaves <unk>,
        <s>, </s> and [IMG] allowed; we suppress all of them so an image is visual ids closed by [/IMG] only."""
        return list(range(0, self.img_end_id))

    def text_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[size] bool, True on text ids."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        mask[: self.text_vocab_size] = True
        return mask


def build_byte_text_tokenizer(model_max_length: int = 2048):
    """A byte-level BPE tokenizer without merges: <unk>=0, <s>=1, </s>=2, then the 256 byte symbols (ids 3..258).

    Any text round-trips through it; ids stay far below 32000, so LaVIT's id layout is unchanged. Its
    `padding_side` is "left" like the released code's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({symbol: len(specials) + i for i, symbol in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # Like LLaMA's tokenizer: <s> is prepended unless add_special_tokens=False (LaVIT's prompts use False).
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",  # released: pad_token = eos_token
        padding_side="left",
        model_max_length=model_max_length,
    )
    return tokenizer
