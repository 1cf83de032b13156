"""Mini-world stand-in for the released Llama-2 (`vila_llm_pretrain`): LaVIT's text-only LLM pre-training task
(`train/lavit/llm_pretrain.py`) under a VILA stage name, with VILA's `data.miniworld` key: an empty
`data.text_sources` reads the mini world's corpus (`<miniworld>/text/<source>.jsonl` for each source of
`data.text_weights`) and an empty `text_tokenizer` its tokenizer (`<miniworld>/tokenizer`). The refusal of the
`paper` preset names VILA's downstream key. Presets: `train/vila/config.py`."""

from __future__ import annotations

import copy
from pathlib import Path

from harness.errors import InputError
from train.lavit.common import refuse_released_stand_in
from train.lavit.llm_pretrain import LlmPretrainTask as _LavitLlmPretrainTask


def with_miniworld(cfg):
    """A copy of `cfg` with the text sources and the tokenizer the mini world `data.miniworld` provides filled in
    where they are empty (the run's config.yaml keeps the key, as the other VILA stages do)."""
    root = getattr(cfg.data, "miniworld", "")
    if cfg.data.text_sources and cfg.text_tokenizer:
        return cfg  # both given: the mini world (the preset's default root) is not needed, so not required
    if not root:
        if not cfg.text_tokenizer:
            raise InputError("text_tokenizer is not set: a local tokenizer folder, \"byte\", or set data.miniworld to use the mini world's")
        return cfg
    if not (Path(root) / "DONE").is_file():
        raise InputError(f"data.miniworld={root}: no complete mini world there (build it: python -m harness.miniworld --root {root})")
    cfg = copy.deepcopy(cfg)
    if not cfg.data.text_sources:
        cfg.data.text_sources = {n: [str(Path(root) / "text" / f"{n}.jsonl")] for n, w in cfg.data.text_weights.items() if w > 0}
    if not cfg.text_tokenizer:
        cfg.text_tokenizer = str(Path(root) / "tokenizer")
    return cfg


class LlmPretrainTask(_LavitLlmPretrainTask):
    def __init__(self, cfg, output_dir: Path):
        refuse_released_stand_in("vila_llm_pretrain", cfg.released_stand_in, "vila_projector as llm_path=<Llama-2-7B folder>")
        super().__init__(with_miniworld(cfg), output_dir)
