"""Mini-world stand-in for LLaMA: causal-LM pre-training of the text-only LLM that stage 2 starts from.

The model is a transformers `LlamaForCausalLM` with the shapes of the LaVIT config's `llm` section and a vocabulary
of exactly `llm.text_vocab_size` rows: the text part of LaVIT's vocabulary (`model.lavit.modeling_lavit.llama_config` sizes it
text + [IMG] + [/IMG] + K codes; the rows beyond the text are stage 2's to add, as they are for LLaMA-7B).

Data: JSONL documents from named sources drawn by `data.text_weights` (`Mixture` of `JsonlText`), tokenized as
`<s> document </s>` and packed greedily into sequences of exactly `seq_len` positions, as stage 2 packs its text
documents: attention is block-diagonal causal (never across a document boundary), positions restart at 0 in every
document, a document's first token is never predicted from the previous document, and a document that does not fit
continues at the start of the next sequence (as a fresh segment: it does not see its earlier part). Unfilled
positions (only at the end of a stream) are single-position documents with no target.

Loss: next-token cross-entropy summed over supervised targets, divided by the targets in the whole global batch.
Logged: loss, tok_per_s (the trainer's throughput of packed positions), docs, pad_tokens.

Checkpoint keys: `language_model.*` (a LlamaForCausalLM state dict under that prefix); stage 2 loads them with
`llm_path=<this run>` (`unified.load_llama_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import InputError
from model.lavit.modeling_lavit import text_llama_config
from train.data import Batched, JsonlText, Mapped, Mixture, PackedSequence, Packer, PackPiece
from train.distributed import DistInfo
from train.lavit.common import refuse_released_stand_in
from train.lavit.config import LlmPretrainStageConfig
from train.stages.common import require_path, require_shards, synthetic_text_sources
from train.trainer import StatelessStage, StepOutput

IGNORE_INDEX = -100


def load_text_tokenizer(name: str):
    """"byte" -> the model's byte-level tokenizer; else a local HF tokenizer folder (nothing is downloaded)."""
    from model.lavit.vocabulary import build_byte_text_tokenizer

    if name == "byte":
        return build_byte_text_tokenizer(model_max_length=1 << 30)  # documents are packed, not truncated
    from transformers import AutoTokenizer

    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"text_tokenizer {path} is not a local tokenizer folder (nothing is downloaded); use 'byte' for tests")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def supervised_targets(segments: list[tuple[list[int], int, int]]) -> int:
    """Every position of a segment but its first has an in-document predecessor, so it is a target."""
    return sum(max(0, end - start - 1) for _, start, end in segments)


class CausalLMModule(nn.Module):
    """LlamaForCausalLM over packed rows; forward(list of PackedSequence) -> summed CE over supervised targets."""

    def __init__(self, language_model: nn.Module, seq_len: int, pad_id: int):
        super().__init__()
        self.language_model = language_model
        self.seq_len = seq_len
        self.pad_id = pad_id

    def forward(self, rows: list[PackedSequence]) -> StepOutput:
        device = self.language_model.get_input_embeddings().weight.device
        L = self.seq_len
        ids, docs, positions = [], [], []
        counts = {"docs": 0.0, "pad_tokens": 0.0}
        for row in rows:
            row_ids, row_docs, row_pos = [], [], []
            for index, (doc, start, end) in enumerate(row.segments):
                row_ids.extend(doc[start:end])
                row_docs.extend([index] * (end - start))
                row_pos.extend(range(end - start))
                counts["docs"] += start == 0
            p = L - row.length
            counts["pad_tokens"] += p
            n = len(row.segments)
            row_ids.extend([self.pad_id] * p)
            row_docs.extend(range(n, n + p))  # each pad is its own one-position document (no empty softmax rows)
            row_pos.extend([0] * p)
            ids.append(row_ids)
            docs.append(row_docs)
            positions.append(row_pos)
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)  # (b, L)
        doc_t = torch.tensor(docs, dtype=torch.long, device=device)  # (b, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = (doc_t[:, :, None] == doc_t[:, None, :]) & causal  # (b, L, L)
        out = self.language_model(input_ids=input_ids, attention_mask=mask[:, None], position_ids=torch.tensor(positions, device=device))
        logits = out.logits[:, :-1].float()  # (b, L-1, V): position t predicts token t+1
        same_doc = doc_t[:, 1:] == doc_t[:, :-1]
        targets = input_ids[:, 1:].masked_fill(~same_doc, IGNORE_INDEX)
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        expected = sum(supervised_targets(row.segments) for row in rows)
        actual = int((targets != IGNORE_INDEX).sum())
        if actual != expected:
            raise AssertionError(f"supervised targets: pipeline counted {expected}, the batch has {actual}")
        return StepOutput(loss_sum=loss_sum, metric_counts=counts)


class LlmPretrainTask(StatelessStage):
    unit = "tok"

    def __init__(self, cfg: LlmPretrainStageConfig, output_dir: Path):
        refuse_released_stand_in("llm_pretrain", cfg.released_stand_in, "stage 2 as llm_path=<LLaMA-7B folder>")
        if cfg.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {cfg.seq_len}")
        if cfg.seq_len > cfg.model.llm.max_position_embeddings:
            raise ValueError(f"seq_len={cfg.seq_len} exceeds model.llm.max_position_embeddings={cfg.model.llm.max_position_embeddings}")
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.module: CausalLMModule | None = None

    # -- inputs (checked before anything is built) ---------------------------------------------------------------
    def check_inputs(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        weights = sorted(n for n, w in data.text_weights.items() if w > 0)
        if not weights:
            raise InputError(f"data.text_weights has no source with a positive weight: {data.text_weights}")
        if cfg.text_tokenizer != "byte":
            require_path(cfg.text_tokenizer, "text_tokenizer", "a local tokenizer folder, or \"byte\"")
        for name in weights:  # synthetic text fills in only when data.text_sources is empty as a whole
            require_shards(data.text_sources.get(name, []), f"data.text_sources.{name}", cfg.synthetic.enabled and not data.text_sources)

    def parameter_counts(self) -> tuple[int, int]:
        from transformers import LlamaForCausalLM

        with torch.device("meta"):  # shapes only: every parameter trains
            model = LlamaForCausalLM(text_llama_config(self.cfg.model))
        return sum(p.numel() for p in model.parameters()), 0

    def build_model(self, info: DistInfo) -> nn.Module:
        from transformers import LlamaForCausalLM

        cfg = self.cfg
        cfg.model.validate()
        self.module = CausalLMModule(LlamaForCausalLM(text_llama_config(cfg.model)), cfg.seq_len, cfg.model.llm.eos_token_id)
        return self.module

    def block_types(self) -> tuple[type, ...]:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return (LlamaDecoderLayer,)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"llm": [(n, p) for n, p in model.named_parameters() if p.requires_grad]}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        return ()

    def build_data(self, info: DistInfo, micro_batch_size: int):
        cfg, data = self.cfg, self.cfg.data
        weights = {n: w for n, w in data.text_weights.items() if w > 0}
        if not weights:
            raise ValueError(f"data.text_weights has no source with a positive weight: {data.text_weights}")
        sources = dict(data.text_sources)
        if cfg.synthetic.enabled and not sources:
            sources = synthetic_text_sources(cfg.synthetic, sorted(weights), self.output_dir, info)
        missing = set(weights) - set(sources)
        if missing:
            raise ValueError(f"data.text_weights names sources without files in data.text_sources: {sorted(missing)}")
        tok = load_text_tokenizer(cfg.text_tokenizer)
        llm = cfg.model.llm
        if len(tok) > llm.text_vocab_size:
            raise ValueError(f"text_tokenizer {cfg.text_tokenizer!r} has {len(tok)} ids > model.llm.text_vocab_size={llm.text_vocab_size}")
        seed = cfg.loop.seed
        common = dict(rank=info.rank, world_size=info.world_size, partition=data.partition, text_key=data.text_key)
        text = Mixture({n: JsonlText(sources[n], seed=seed + 11 + i, **common) for i, n in enumerate(sorted(weights))}, weights, seed=seed + 3)

        def to_doc(drawn) -> list[int] | None:
            ids = tok(drawn[1], add_special_tokens=False)["input_ids"]
            return [llm.bos_token_id, *ids, llm.eos_token_id] if ids else None

        packed = Packer(Mapped(text, to_doc), cfg.seq_len, lambda doc: PackPiece(len(doc), True, doc))
        return Batched(packed, micro_batch_size, list)

    def units(self, rows: list[PackedSequence]) -> int:
        return sum(supervised_targets(row.segments) for row in rows)

    def throughput_amount(self, rows: list[PackedSequence]) -> int:
        return sum(row.length for row in rows)
