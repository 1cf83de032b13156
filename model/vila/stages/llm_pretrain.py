"""Mini-world stand-in for the released Llama-2 (`vila_llm_pretrain`): LaVIT's text-only LLM pre-training task
(`model/lavit/stages/llm_pretrain.py`) under a VILA stage name; only the refusal of the `paper` preset names VILA's
downstream key. Presets: `model/vila/stages/config.py`."""

from __future__ import annotations

from pathlib import Path

from model.lavit.stages.common import refuse_released_stand_in
from model.lavit.stages.llm_pretrain import LlmPretrainTask as _LavitLlmPretrainTask


class LlmPretrainTask(_LavitLlmPretrainTask):
    def __init__(self, cfg, output_dir: Path):
        refuse_released_stand_in("vila_llm_pretrain", cfg.released_stand_in, "vila_projector as llm_path=<Llama-2-7B folder>")
        super().__init__(cfg, output_dir)
