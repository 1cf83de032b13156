"""Stage 2: unified vision-language pre-training (paper §3.2-3.3, App. B.1, Table 9 "VL Pre-training").

Three kinds of documents share one next-token cross-entropy (Eq. 6):

    [image; text]  understanding: [IMG] vit_proj(merger(X))_kept [/IMG] caption </s>   (continuous visual input;
                   the visual slots predict their codes, App. B.2)
    [text; image]  generation:    <s> caption [IMG] codes [/IMG]                         (discrete visual targets)
    text           RedPajama:     <s> document </s>

mixed by proportions (text : image-text = 2 : 1; the text part by Table 5's RedPajama subset proportions), and
packed into sequences of exactly `seq_len` positions. Attention never crosses a document boundary (a block-
diagonal causal mask; positions restart at 0 per document) and no document's first token is predicted from
the previous document. Text documents may continue into the next sequence; image-text documents are never cut.

Visual codes (the targets) and the keep masks come from the frozen stage-1 tokenizer, computed on the fly in the
data pipeline by a separate frozen copy of it, or read from a pre-tokenised cache (`data.codes_cache`, written by
`train.lavit.unified.cache_codes`). The selection is the released one (hard Gumbel-softmax sampling) with noise
seeded by (seed, sample key), so a resumed run and the cache reproduce exactly the same keep masks and codes.

Two parameter groups with their own peak LRs (Table 9): "llm" (5e-5) and "visual" (the understanding merger and
vit_proj, 1.5e-4). The loss is summed over supervised tokens and divided by the number of supervised tokens in the
whole global batch, so the gradient does not depend on how the batch is split over processes.

Ablations (`model.ablation`): with `freeze_llm` (Table 7b) the "llm" group is empty and the optimizer skips it; with
`visual_objective=regression` (Table 3a) every visual slot of both image-text document kinds is a regression target
(the frozen stage-1 part feature of that slot, see `modeling_lavit.py`) instead of a code: its per-slot loss
replaces the slot's CE in the same sum, so the supervised-target count (the normaliser) is unchanged. Logged:
`loss_ce` + `loss_regression` = `loss` (the two shares), `ce_targets`, `regression_targets`, `regression_sum`
(mean regression loss per slot = regression_sum / regression_targets).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.lavit.checkpoints import RUN_EXCLUDE, load_tokenizer_checkpoint, read_llm_weights
from train.data import Batched, ImageTextShards, JsonlText, Mapped, Mixture, PackedSequence, Packer, PackPiece, Strided
from train.distributed import DistInfo
from train.lavit.common import meta_parameter_counts
from train.lavit.config import UnifiedDataConfig, UnifiedStageConfig
from train.stages.common import (
    RANDOM_INIT,
    latest_checkpoint_dir,
    require_path,
    require_shards,
    require_upstream,
    require_weights,
    synthetic_image_shards,
    synthetic_text_sources,
)
from train.trainer import StatelessStage, StepOutput

IGNORE_INDEX = -100


@dataclass
class Doc:
    """One document of the packed stream (the payload of a PackPiece)."""

    kind: str  # "text", "understanding" or "generation"
    text_ids: list[int]  # token ids of the text part (text docs: <s> ... </s>; captions: no specials)
    codes: torch.Tensor | None = None  # (k,) visual codes of the kept patches (image-text docs)
    keep: torch.Tensor | None = None  # (N,) bool keep mask (understanding docs)
    pixel_values: torch.Tensor | None = None  # (3, S, S) preprocessed image (understanding docs; all image docs
    # in the regression ablation, whose targets are computed from it)
    ignored_prefix: int = 0  # leading positions whose label is IGNORE_INDEX

    def length(self) -> int:
        k = 0 if self.codes is None else int(self.codes.numel())
        if self.kind == "text":
            return len(self.text_ids)
        if self.kind == "understanding":
            return 1 + k + 1 + len(self.text_ids) + 1  # [IMG] slots [/IMG] caption </s>
        return len(self.text_ids) + 1 + k + 1  # <s> caption [IMG] codes [/IMG]


def supervised_targets(segments: list[tuple[Doc, int, int]]) -> int:
    """Targets of a packed row: positions p in (start, end) of each segment with a label (the first position of a
    segment has no in-document predecessor, so it is never a target)."""
    return sum(max(0, end - max(start + 1, doc.ignored_prefix)) for doc, start, end in segments)


class UnifiedTrainModule(nn.Module):
    """LaVIT + sequence assembly; forward(list of PackedSequence) -> summed CE over supervised tokens.

    The documents of a packed sequence attend within themselves only: through a block-diagonal FlexAttention kernel
    (`model/lavit/packed_attention.py`) on CUDA, through a dense (b, 1, L, L) mask elsewhere (FlexAttention
    has no backward on CPU). `block_diagonal` forces one or the other (the tests compare them).
    """

    block_diagonal: bool | None = None  # None: the block-diagonal kernel on CUDA

    def __init__(self, lavit: nn.Module, seq_len: int):
        super().__init__()
        self.lavit = lavit
        self.seq_len = seq_len

    def _document_mask(self, docs: torch.Tensor):
        """docs (b, L) -> the attention mask of "same document, not in the future" in the form the LLM runs."""
        use_block = self.block_diagonal if self.block_diagonal is not None else docs.device.type == "cuda"
        if use_block:
            from model.lavit.packed_attention import document_block_mask, enable_block_diagonal

            if enable_block_diagonal(self.lavit.language_model):
                return document_block_mask(docs)
            if self.block_diagonal:
                raise ValueError(
                    "block_diagonal=True needs the LLM on attn_implementation 'sdpa', not "
                    f"{self.lavit.language_model.config._attn_implementation!r}"
                )
        L = docs.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=docs.device).tril()
        return ((docs[:, :, None] == docs[:, None, :]) & causal)[:, None]  # (b, 1, L, L)

    @property
    def regression(self) -> bool:
        return self.lavit.lavit_config.ablation.visual_objective == "regression"

    def _encode_understanding_images(
        self, rows: list[PackedSequence]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
        """LLM inputs of the [image; text] documents' images, the regression targets of every image document
        (Table 3a ablation only; else empty), and a zero that ties the understanding path into the loss. Every rank
        must run the same sharded modules in forward and backward (FSDP's all-gathers and reduce-scatters are
        collectives), so a micro-batch without such images runs one blank image through the understanding path and
        adds 0 x its output to the loss."""
        lavit = self.lavit
        device = lavit.llm_device
        docs = [doc for row in rows for doc, _, _ in row.segments if doc.kind != "text"]  # never cut: each once
        und = [doc for doc in docs if doc.kind == "understanding"]
        if und:
            pixels = torch.stack([d.pixel_values for d in und]).to(device)  # (u, 3, S, S)
            keep = torch.stack([d.keep for d in und]).to(device)  # (u, N)
        else:
            size, n = lavit.visual_tokenizer.cfg.image_size, lavit.visual_tokenizer.cfg.num_patches
            pixels = torch.zeros(1, 3, size, size, device=device)
            keep = torch.ones(1, n, dtype=torch.bool, device=device)
        encoded = lavit.encode_images(pixels, keep_mask=keep, need_codes=False, need_part_features=self.regression)
        tie = sum(e.sum() for e in encoded.llm_embeds) * 0.0
        targets: dict[int, torch.Tensor] = {}
        if self.regression:
            targets.update({id(d): f for d, f in zip(und, encoded.part_features)})
            gen = [doc for doc in docs if doc.kind == "generation"]
            if gen:
                pixels = torch.stack([d.pixel_values for d in gen]).to(device)
                keep = torch.stack([d.keep for d in gen]).to(device)
                targets.update({id(d): f for d, f in zip(gen, lavit.stage1_part_features(pixels, keep))})
        return {id(d): e for d, e in zip(und, encoded.llm_embeds)}, targets, tie  # (k_i, h), (k_i, d)

    def _items(self, rows: list[PackedSequence], embeds_of: dict[int, torch.Tensor], targets_of: dict[int, torch.Tensor]):
        lavit = self.lavit
        cache: dict[int, Any] = {}
        for row in rows:
            pieces = []
            for doc, start, end in row.segments:
                if id(doc) not in cache:
                    ids = torch.tensor(doc.text_ids, dtype=torch.long)
                    if doc.kind == "text":
                        cache[id(doc)] = lavit.text_item(ids)
                    elif doc.kind == "understanding":
                        cache[id(doc)] = lavit.understanding_item(
                            embeds_of[id(doc)], ids, codes=doc.codes, append_eos=True, continuous_features=targets_of.get(id(doc))
                        )
                    else:
                        cache[id(doc)] = lavit.generation_item(ids, doc.codes, continuous_features=targets_of.get(id(doc)))
                item = cache[id(doc)]
                if item.embeds.shape[0] != doc.length():
                    raise AssertionError(f"{doc.kind} document: model built {item.embeds.shape[0]} positions, pipeline expected {doc.length()}")
                pieces.append((item, start, end))
            yield row, pieces

    def _step_ids(self, rows: list[PackedSequence]) -> torch.Tensor:
        """Every id this step's sequences embed: texts, visual codes, [IMG], [/IMG], </s> (pads, appended EOS)."""
        v = self.lavit.vocab
        parts = [torch.tensor([v.img_start_id, v.img_end_id, self.lavit.lavit_config.llm.eos_token_id])]
        for row in rows:
            for doc, _, _ in row.segments:
                parts.append(torch.as_tensor(doc.text_ids, dtype=torch.long))
                if doc.codes is not None:
                    parts.append(v.code_to_id(doc.codes.reshape(-1).long().cpu()))
        return torch.cat(parts)

    def forward(self, rows: list[PackedSequence]) -> StepOutput:
        embeds_of, targets_of, tie = self._encode_understanding_images(rows)
        with self.lavit.shared_embedding(self._step_ids(rows)):  # one embedding call (and gradient) per step
            return self._forward(rows, embeds_of, targets_of, tie)

    def _forward(self, rows, embeds_of, targets_of, tie) -> StepOutput:
        lavit = self.lavit
        device = lavit.llm_device
        eos = lavit.lavit_config.llm.eos_token_id
        pad = lavit.embed_ids(torch.tensor([eos], device=device))[0]  # (h,)
        L = self.seq_len
        embeds, labels, doc_ids, positions, reg_targets, reg_masks = [], [], [], [], [], []
        counts = {"docs": 0.0, "image_docs": 0.0, "image_tokens": 0.0, "pad_tokens": 0.0}
        width = lavit.visual_tokenizer.cfg.encoder_width
        for row, pieces in self._items(rows, embeds_of, targets_of):
            row_embeds, row_labels, row_docs, row_pos, row_reg, row_reg_mask = [], [], [], [], [], []
            for index, (item, start, end) in enumerate(pieces):
                n = end - start
                row_embeds.append(item.embeds[start:end])
                row_labels.append(item.labels[start:end].to(device))
                if self.regression:
                    if item.regression_mask is None:
                        row_reg.append(torch.zeros(n, width, device=device))
                        row_reg_mask.append(torch.zeros(n, dtype=torch.bool, device=device))
                    else:
                        row_reg.append(item.regression_targets[start:end].float())
                        row_reg_mask.append(item.regression_mask[start:end])
                row_docs.append(torch.full((n,), index, dtype=torch.long, device=device))
                row_pos.append(torch.arange(start, end, device=device) - start)
            doc_list = [d for d, _, _ in row.segments]
            counts["docs"] += sum(1 for d, s, _ in row.segments if s == 0)
            counts["image_docs"] += sum(1 for d in doc_list if d.kind != "text")
            counts["image_tokens"] += sum(int(d.codes.numel()) for d in doc_list if d.kind != "text")
            p = L - row.length
            counts["pad_tokens"] += p
            if p:
                # Each pad position is its own one-token document: it attends to itself only (no NaN rows).
                row_embeds.append(pad.expand(p, -1).to(row_embeds[0].dtype))
                row_labels.append(torch.full((p,), IGNORE_INDEX, dtype=torch.long, device=device))
                row_docs.append(torch.arange(len(pieces), len(pieces) + p, device=device))
                row_pos.append(torch.zeros(p, dtype=torch.long, device=device))
                row_reg.append(torch.zeros(p, width, device=device))
                row_reg_mask.append(torch.zeros(p, dtype=torch.bool, device=device))
            embeds.append(torch.cat(row_embeds))
            if self.regression:
                reg_targets.append(torch.cat(row_reg))
                reg_masks.append(torch.cat(row_reg_mask))
            labels.append(torch.cat(row_labels))
            doc_ids.append(torch.cat(row_docs))
            positions.append(torch.cat(row_pos))
        inputs = torch.stack(embeds)  # (b, L, h)
        labels_t = torch.stack(labels)  # (b, L)
        docs = torch.stack(doc_ids)  # (b, L)
        mask = self._document_mask(docs)  # same document, not in the future
        out = lavit(inputs_embeds=inputs, attention_mask=mask, position_ids=torch.stack(positions))
        logits = out.logits[:, :-1].float()  # (b, L-1, V): position t predicts label t+1
        targets = labels_t[:, 1:].masked_fill(docs[:, 1:] != docs[:, :-1], IGNORE_INDEX)  # no cross-document targets
        token_loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )  # (b * (L-1),), 0 where ignored
        ce_sum = token_loss.sum()
        regression_sum = ce_sum.new_zeros(())
        n_regression = 0
        if self.regression:
            # Table 3a: position t-1 regresses the continuous embedding of visual slot t (same document only).
            slots = torch.stack(reg_masks)[:, 1:] & (docs[:, 1:] == docs[:, :-1])  # (b, L-1)
            if bool((slots & (targets != IGNORE_INDEX)).any()):
                raise AssertionError("a position is both a CE and a regression target")
            per_slot = lavit.regression_losses(out.hidden_states[:, :-1][slots], torch.stack(reg_targets)[:, 1:][slots])
            n_regression = int(per_slot.numel())
            # A batch without visual slots still runs the head (0 x its output): FSDP/DDP see the same modules.
            regression_sum = per_slot.sum() if n_regression else lavit.regression_head(out.hidden_states[:1, 0]).sum() * 0.0
        loss_sum = ce_sum + regression_sum + tie
        expected = sum(supervised_targets(row.segments) for row in rows)
        n_ce = int((targets != IGNORE_INDEX).sum())
        if n_ce + n_regression != expected:
            raise AssertionError(f"supervised targets: pipeline counted {expected}, the batch has {n_ce} CE + {n_regression} regression")
        visual = lavit.vocab.is_visual(targets).reshape(-1)
        counts["visual_targets"] = float(visual.sum())
        counts["visual_ce_sum"] = float(token_loss.detach()[visual].sum())
        counts["text_ce_sum"] = float(ce_sum.detach()) - counts["visual_ce_sum"]
        counts["ce_targets"] = float(n_ce)
        counts["regression_targets"] = float(n_regression)
        counts["regression_sum"] = float(regression_sum.detach())
        return StepOutput(
            loss_sum=loss_sum,
            metric_sums={"loss_ce": ce_sum.detach(), "loss_regression": regression_sum.detach()},
            metric_counts=counts,
        )


class UnifiedTask(StatelessStage):
    unit = "tok"

    def __init__(self, cfg: UnifiedStageConfig, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.module: UnifiedTrainModule | None = None
        self.pipeline_tokenizer = None  # frozen copy of the stage-1 tokenizer used by the data pipeline
        self.text_tokenizer = None

    # -- inputs (checked before anything is built) ---------------------------------------------------------------
    def check_inputs(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        require_upstream(cfg.tokenizer_checkpoint, "tokenizer_checkpoint", "unified", "tokenizer")
        require_weights(cfg.llm_path, "llm_path", "an llm_pretrain run or a local LLaMA folder in transformers format; \"\" = random init")
        if cfg.text_tokenizer != "byte":
            require_path(cfg.text_tokenizer, "text_tokenizer", "a local tokenizer folder, or \"byte\"")
        require_path(data.codes_cache, "data.codes_cache", "written by train.lavit.unified.cache_codes")
        synthetic = cfg.synthetic.enabled
        require_shards(data.understanding_shards, "data.understanding_shards", synthetic, required=data.understanding_weight > 0)
        require_shards(data.generation_shards, "data.generation_shards", synthetic, required=data.understanding_weight < 1)
        for name in sorted(n for n, w in data.text_weights.items() if w > 0):
            # Synthetic text fills in only when data.text_sources is empty as a whole.
            require_shards(data.text_sources.get(name, []), f"data.text_sources.{name}", synthetic and not data.text_sources)

    def parameter_counts(self) -> tuple[int, int]:
        return meta_parameter_counts(self.cfg.model, lambda lavit: [p for ps in lavit.parameter_groups().values() for p in ps])

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, info: DistInfo) -> nn.Module:
        from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig

        cfg = self.cfg
        lavit = LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg.model))
        if cfg.tokenizer_checkpoint != RANDOM_INIT:  # checked in check_inputs; random-init is the explicit opt-in
            load_tokenizer_checkpoint(lavit.visual_tokenizer, latest_checkpoint_dir(cfg.tokenizer_checkpoint))
            # The understanding merger and vit_proj start from the trained tokenizer's (the release does the same).
            lavit.understanding_encoder.causal_encoder.load_state_dict(lavit.visual_tokenizer.causal_encoder.state_dict())
            lavit.understanding_encoder.vit_proj.load_state_dict(lavit.visual_tokenizer.vit_proj.state_dict())
        if cfg.llm_path:
            load_llama_weights(lavit.language_model, cfg.llm_path, cfg.model.llm.text_vocab_size)
        lavit.visual_tokenizer.eval()
        self.pipeline_tokenizer = copy.deepcopy(lavit.visual_tokenizer).eval().requires_grad_(False)
        self.module = UnifiedTrainModule(lavit, cfg.seq_len)
        return self.module

    def block_types(self) -> tuple[type, ...]:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        from model.lavit.token_merger import MergerBlock

        return (LlamaDecoderLayer, MergerBlock)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        # Called after parallelize: under FSDP2 the modules already hold their sharded parameters.
        names = {id(p): n for n, p in model.named_parameters()}
        groups = self.module.lavit.parameter_groups()  # {"llm": [...], "visual": [...]} (Table 9's two LRs)
        # Empty groups stay (Table 7b's frozen LLM leaves "llm" empty): build_optimizer skips them and says so, and
        # optim.group_lr={"llm": ...} of the presets still names an existing group.
        return {g: [(names[id(p)], p) for p in params] for g, params in groups.items()}

    def checkpoint_exclude(self) -> tuple[str, ...]:
        # Frozen and rebuilt from tokenizer_checkpoint (and unused in this stage): not repeated in every checkpoint.
        # The evaluation loader reads runs by the same prefixes.
        return RUN_EXCLUDE

    # -- data ---------------------------------------------------------------------------------------------------
    def _text_tokenizer(self):
        from model.lavit.vocabulary import build_byte_text_tokenizer

        if self.cfg.text_tokenizer == "byte":
            return build_byte_text_tokenizer(model_max_length=1 << 30)  # documents are packed, not truncated
        from transformers import AutoTokenizer

        from model.text_tokenizer import load_text_tokenizer, sentencepiece_only

        path = Path(self.cfg.text_tokenizer)
        if not path.is_dir():
            raise FileNotFoundError(f"text_tokenizer {path} is not a local tokenizer folder (nothing is downloaded); use 'byte' for tests")
        if sentencepiece_only(path):  # a LLaMA-style release's tokenizer.model alone: AutoTokenizer cannot load it
            return load_text_tokenizer(path)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def build_data(self, info: DistInfo, micro_batch_size: int):
        cfg, data = self.cfg, self.cfg.data
        und, gen, text_sources = data.understanding_shards, data.generation_shards, dict(data.text_sources)
        if cfg.synthetic.enabled:
            shards = synthetic_image_shards(cfg.synthetic, self.output_dir, info)
            und, gen = und or shards, gen or shards
            text_sources = text_sources or synthetic_text_sources(cfg.synthetic, [n for n, w in data.text_weights.items() if w > 0], self.output_dir, info)
        # "sequence": every rank reads and packs the whole stream and keeps every world_size-th packed sequence, so
        # the global batch is the same at any world size (exact 1-vs-N equivalence; costs N x the data work).
        by_sequence = data.partition == "sequence"
        seed = cfg.loop.seed
        common = dict(rank=0, world_size=1, partition="sample") if by_sequence else dict(rank=info.rank, world_size=info.world_size, partition=data.partition)
        text = text_mixture(data, text_sources, seed, **common)
        image_streams, image_weights = {}, {}
        if data.understanding_weight > 0:
            if not und:
                raise ValueError("data.understanding_weight > 0 but data.understanding_shards is empty")
            image_streams["understanding"] = ImageTextShards(und, seed=seed + 1, **common)
            image_weights["understanding"] = data.understanding_weight
        if data.understanding_weight < 1:
            if not gen:
                raise ValueError("data.understanding_weight < 1 but data.generation_shards is empty")
            image_streams["generation"] = ImageTextShards(gen, seed=seed + 2, **common)
            image_weights["generation"] = 1.0 - data.understanding_weight
        w_text, w_image = data.text_to_image_text
        top = Mixture({"text": text, "image_text": Mixture(image_streams, image_weights, seed=seed + 4)}, {"text": w_text, "image_text": w_image}, seed=seed)
        self.text_tokenizer = self._text_tokenizer()
        codes_cache = CodesCache(data.codes_cache) if data.codes_cache else None
        docs = Mapped(top, lambda drawn: self._to_doc(drawn, codes_cache))
        packed = Packer(docs, cfg.seq_len, lambda doc: PackPiece(doc.length(), doc.kind == "text", doc))
        if by_sequence:
            packed = Strided(packed, info.rank, info.world_size)
        return Batched(packed, micro_batch_size, list)

    @torch.no_grad()
    def _to_doc(self, drawn, codes_cache: "CodesCache | None") -> Doc | None:
        top_name, (kind, item) = drawn
        tok = self.text_tokenizer
        llm = self.cfg.model.llm
        if top_name == "text":
            ids = tok(item, add_special_tokens=False)["input_ids"]
            return Doc("text", [llm.bos_token_id, *ids, llm.eos_token_id]) if ids else None
        if any(str(item.meta.get(k)) != v for k, v in self.cfg.data.image_text_filter.items()):
            return None
        caption = tok(item.text, add_special_tokens=False)["input_ids"]
        if not caption:
            return None
        tokenizer = self.pipeline_tokenizer
        pixels = tokenizer.preprocess([item.image]).cpu()  # (1, 3, S, S)
        if codes_cache is not None:
            keep, codes = codes_cache.lookup(item.key, tokenizer.cfg.num_patches)
        else:
            keeps, codes_list = select_and_code(tokenizer, pixels, [item.key], self.cfg.visual_selection, self.cfg.loop.seed)
            keep, codes = keeps[0].cpu(), codes_list[0].cpu()
        if kind == "understanding":
            supervise = self.cfg.model.ablation.supervise_image_tokens_in_understanding
            ignored = 0 if supervise else 1 + int(codes.numel()) + 1
            return Doc("understanding", caption, codes=codes, keep=keep, pixel_values=pixels[0], ignored_prefix=ignored)
        if self.cfg.model.ablation.visual_objective == "regression":  # the model computes the continuous targets
            return Doc("generation", [llm.bos_token_id, *caption], codes=codes, keep=keep, pixel_values=pixels[0])
        return Doc("generation", [llm.bos_token_id, *caption], codes=codes)

    def units(self, rows: list[PackedSequence]) -> int:
        return sum(supervised_targets(row.segments) for row in rows)

    def throughput_amount(self, rows: list[PackedSequence]) -> int:
        return sum(row.length for row in rows)


# ---------------------------------------------------------------------------------------------
# LLaMA weights and the pre-tokenised code cache.


def load_llama_weights(language_model: nn.Module, path: str, text_vocab_size: int) -> None:
    """A local LLaMA folder (transformers layout: *.safetensors or pytorch_model*.bin, with or without an
    *.index.json; `model.weights.read_sharded_state_dict`) or an `llm_pretrain` run (`read_llm_weights`) into
    LaVIT's LLM, strictly. The embedding and LM-head rows of the text vocabulary are copied; [IMG], [/IMG] and the
    visual rows keep their init."""
    state, folder = read_llm_weights(path)
    own = language_model.state_dict()
    with torch.no_grad():
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                rows = state.pop(key)
                if rows.shape[0] != text_vocab_size or rows.shape[1] != own[key].shape[1]:
                    raise ValueError(f"{key} in {folder}: shape {tuple(rows.shape)}, expected ({text_vocab_size}, {own[key].shape[1]})")
                own[key][:text_vocab_size].copy_(rows)
                state[key] = own[key]
    missing, unexpected = language_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"LLaMA weights {folder}: missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")


class CodesCache:
    """Pre-tokenised visual codes: DIR/<shard name>.codes.jsonl, one line {"key", "keep": [kept patch indices],
    "codes": [...]} per sample. Looked up by sample key; one shard's file is held in memory at a time."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"codes cache directory {self.directory} does not exist (write it with train.lavit.unified.cache_codes)")
        self._index: dict[str, tuple[list[int], list[int]]] = {}
        self._loaded: set[Path] = set()

    def lookup(self, key: str, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self._index:
            self._load_for(key)
        kept, codes = self._index[key]
        keep = torch.zeros(num_patches, dtype=torch.bool)
        keep[kept] = True
        return keep, torch.tensor(codes, dtype=torch.long)

    def _load_for(self, key: str) -> None:
        for file in sorted(self.directory.glob("*.codes.jsonl")):
            if file in self._loaded:
                continue
            self._index = {}  # memory stays at one shard's worth
            self._loaded = {file}
            for line in file.read_text().splitlines():
                rec = json.loads(line)
                self._index[rec["key"]] = (rec["keep"], rec["codes"])
            if key in self._index:
                return
        raise KeyError(f"sample {key!r} is not in the codes cache {self.directory}")


def sample_generator(seed: int, key: str) -> torch.Generator:
    """The Gumbel noise of one image's selection: a function of (seed, sample key) only, so on-the-fly tokenization,
    a resumed run and the code cache all draw the same keep mask for the same image."""
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))


def text_mixture(data: UnifiedDataConfig, text_sources: dict[str, list[str]], seed: int, **stream_options) -> Mixture:
    """The text-only stream of stage 2: the JSONL sources drawn by `data.text_weights` (the paper preset: Table 5's
    RedPajama proportions). `reproduce/table5.py` draws from this very function."""
    text_weights = {n: w for n, w in data.text_weights.items() if w > 0}
    missing = set(text_weights) - set(text_sources)
    if missing:
        raise ValueError(f"data.text_weights names sources without files in data.text_sources: {sorted(missing)}")
    return Mixture(
        {n: JsonlText(text_sources[n], seed=seed + 11 + i, text_key=data.text_key, **stream_options) for i, n in enumerate(sorted(text_weights))},
        text_weights,
        seed=seed + 3,
    )


@torch.no_grad()
def select_and_code(tokenizer: nn.Module, pixels: torch.Tensor, keys: list[str], selection: str, seed: int):
    """pixels (B, 3, S, S) -> keep masks (B, N) bool and codes [(k_i,)] from the frozen tokenizer.

    "sampled" is the released code's selection at training and inference (hard Gumbel-softmax), with per-image
    noise from `sample_generator`; "deterministic" keeps the patches whose keep probability is >= 0.5."""
    device = next(tokenizer.parameters()).device
    features = tokenizer.encode_features(pixels.to(device))  # (b, n, d)
    log_probs = tokenizer.selector_log_probs(features)  # (b, n, 2)
    if selection == "sampled":
        keep = torch.cat([tokenizer.select(log_probs[i : i + 1].cpu(), "sampled", sample_generator(seed, key)) for i, key in enumerate(keys)])
    else:
        keep = tokenizer.select(log_probs, "deterministic")
    keep = keep.to(device)  # (b, n) float 0/1
    codes = tokenizer.quantize_features(tokenizer.gather_kept(tokenizer.merge(features, keep), keep))
    return keep > 0.5, codes


@torch.no_grad()
def cache_codes(
    tokenizer: nn.Module, shards: list[str], directory: str | Path, batch_size: int = 32, selection: str = "sampled", seed: int = 0
) -> dict[str, int]:
    """The separate pre-tokenisation job: every sample of `shards` through the frozen tokenizer (the same selection
    and per-image noise as on-the-fly tokenization with this seed), written as DIR/<shard>.codes.jsonl.
    Returns counts (samples written, skipped by reason)."""
    from harness.io import atomic_write_text
    from harness.data import expand_files

    directory = Path(directory)
    written = 0
    skipped: dict[str, int] = {}
    for shard in expand_files(shards, "tar shard"):
        stream = ImageTextShards([shard], require_text=False)
        lines: list[str] = []
        batch: list[Any] = []

        def flush():
            pixels = tokenizer.preprocess([s.image for s in batch])
            keeps, codes_list = select_and_code(tokenizer, pixels, [s.key for s in batch], selection, seed)
            for sample, keep, codes in zip(batch, keeps, codes_list):
                lines.append(json.dumps({"key": sample.key, "keep": keep.nonzero().flatten().tolist(), "codes": codes.tolist()}))
            batch.clear()

        while stream.epoch == 0:
            try:
                sample = next(stream)
            except RuntimeError:  # not a single readable sample in this shard
                break
            if stream.epoch != 0:  # wrapped around: the shard is done
                break
            batch.append(sample)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        for reason, count in stream.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        atomic_write_text(directory / f"{Path(shard).name}.codes.jsonl", "\n".join(lines) + "\n")
        written += len(lines)
    return {"written": written, **{f"skipped_{k}": v for k, v in skipped.items()}}
