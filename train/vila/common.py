"""What VILA's three stages share: the trainable module, the weights a stage starts from, tokenization, encoding.

A stage differs from the others only in its data stream (`build_samples`: a stream of `data.Segment` lists), which
parts train (`VilaForCausalLM.set_trainable(stage, train_llm)`) and which weights it starts from:

    vila_projector   llm_path (Llama-2 / an llm_pretrain run) + vision_tower_path (CLIP / a vila_vision_pretrain run)
    vila_pretrain    init_from = a vila_projector run (the whole model)
    vila_sft         init_from = a vila_pretrain run (the whole model)

Checkpoints hold the whole model with `VilaForCausalLM.state_dict()` names (frozen parts included: a finished run
is a complete model, loaded by `model/vila/checkpoints.py` and by the next stage).

Loss: next-token cross-entropy over the supervised labels (data.py), summed per micro-batch and divided by the
supervised targets of the whole global batch (the trainer's normaliser), as LaVIT's stages do.
Logged: loss, samples, images, pad_positions (positions of padding after image expansion), tok_per_s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import InputError
from model.vila.conversation import adds_bos
from model.vila.data import IGNORE_INDEX, Encoded, Rows, Segment, encode
from train.data import Batched, Mapped
from train.distributed import DistInfo
from train.stages.common import require_path
from train.trainer import StatelessStage, StepOutput


class VilaTrainModule(nn.Module):
    """Holds a VilaForCausalLM's parts as its own children, so the checkpoint keys are exactly the model's
    `state_dict()` names (no wrapper prefix); forward(list of Encoded) -> summed CE over supervised targets."""

    def __init__(self, vila: nn.Module):
        super().__init__()
        if any(True for _ in vila.named_parameters(recurse=False)) or any(True for _ in vila.named_buffers(recurse=False)):
            raise AssertionError("VilaForCausalLM holds tensors outside its sub-modules; the key layout would change")
        for name, child in vila.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "vila", vila)  # not a registered child: its parts are ours already

    def forward(self, batch: list[Encoded]) -> StepOutput:
        vila = self.vila
        device = vila.llm_device
        pad = vila.vila_config.llm.pad_token_id
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for b, e in enumerate(batch):
            n = len(e.input_ids)
            ids[b, :n] = torch.tensor(e.input_ids)
            mask[b, :n] = 1
            labels[b, :n] = torch.tensor(e.labels)
        images = [img for e in batch for img in e.images]
        pixels = torch.stack(images).to(device) if images else None
        out = vila(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device), images=pixels)
        expanded = max(e.length for e in batch)
        if out.logits.shape[1] != expanded:
            raise AssertionError(f"the model expanded the batch to {out.logits.shape[1]} positions, the pipeline counted {expanded}")
        targets = sum(e.supervised_targets() for e in batch)
        loss_sum = out.loss.float() * targets  # the model's loss is the mean over exactly these targets
        if pixels is None:
            # Every rank must run the same modules in forward and backward (DDP/FSDP collectives): a batch without
            # images runs one blank image through the vision path and adds 0 x its output.
            side = vila.vila_config.vision.image_size
            loss_sum = loss_sum + 0.0 * vila.encode_images(torch.zeros(1, 3, side, side, device=device)).float().sum()
        counts = {
            "samples": float(len(batch)),
            "images": float(len(images)),
            "pad_positions": float(sum(expanded - e.length for e in batch)),
        }
        return StepOutput(loss_sum=loss_sum, metric_counts=counts)


# ---------------------------------------------------------------------------------------------
# Weights a stage starts from.


def read_llm_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """Plain LLaMA weights (`model.layers.*`, `lm_head.weight`) from a transformers folder (Llama-2-7B, sharded or
    not), a weights file, or a run directory whose checkpoints hold `language_model.*` (an llm_pretrain run)."""
    from model.weights import read_sharded_state_dict, read_weights, strip_prefix

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir():
        state, file = read_sharded_state_dict(p), str(p)
    else:
        state, file = read_weights(path)
    if any(k.startswith("language_model.") for k in state):
        state = strip_prefix(state, "language_model.")
    return state, file


def read_vision_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """CLIPVisionModel weights (keys as its state_dict: `embeddings.*`, `encoder.*`, ...) from a CLIP / CLIPVisionModel folder or weights file (text tower
    keys are left out), a VILA checkpoint (`vision_tower.clip.*`) or a vila_vision_pretrain run."""
    from model.weights import read_sharded_state_dict, read_weights

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir():
        state, file = read_sharded_state_dict(p), str(p)
    else:
        state, file = read_weights(path)
    for prefix in ("vision_tower.clip.", "vision_tower."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    # Released CLIP files name the tower `vision_model.*` (and hold a text tower); transformers 5's CLIPVisionModel
    # state dict has no such prefix: keep the vision keys, without it.
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    return state, file


def load_vision_weights(vila: nn.Module, path: str) -> None:
    from model.weights import check_state_dict

    state, file = read_vision_weights(path)
    clip = vila.vision_tower.clip
    expected = {k: v.shape for k, v in clip.state_dict().items()}
    check_state_dict(file, state, expected, tolerated_suffixes=("position_ids",), what="the vision tower (CLIPVisionModel)")
    clip.load_state_dict(state, strict=False)


def load_llm_weights(vila: nn.Module, path: str) -> None:
    from model.weights import CheckpointLayoutError

    state, file = read_llm_weights(path)
    own = vila.language_model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise InputError(f"llm_path {file}: LLM weights of other shapes than model.llm ({'; '.join(wrong[:4])})")
    try:
        vila.load_llm_state_dict(state)
    except CheckpointLayoutError as err:
        raise InputError(f"llm_path {file}: {err}") from None


def load_vila_weights(vila: nn.Module, path: str, key: str) -> None:
    """A whole VILA model (an upstream stage run, one of its checkpoints, or a weights file) into `vila`. The LLM
    goes through `load_llm_state_dict` (LoRA adapters added by this stage start fresh; a visual expert this stage
    adds starts as a copy of the loaded LLM)."""
    from model.weights import CheckpointLayoutError, read_weights, strip_prefix

    state, file = read_weights(path)
    llm = strip_prefix({k: v for k, v in state.items() if k.startswith("language_model.")}, "language_model.")
    rest = {k: v for k, v in state.items() if not k.startswith("language_model.")}
    own = {k: v for k, v in vila.state_dict().items() if not k.startswith("language_model.")}
    missing = sorted(k for k in own if k not in rest and not k.startswith("visual_expert."))
    unexpected = sorted(k for k in rest if k not in own)
    wrong = [f"{k}: {tuple(rest[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in rest and rest[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise InputError(
            f"{key}={path}: the weights in {file} are not a VILA model of this config (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, other shapes {wrong[:4]}); was it trained with other model.* values?"
        )
    try:
        vila.load_llm_state_dict(llm)
    except CheckpointLayoutError as err:
        raise InputError(f"{key}={path}: {err}") from None
    vila.load_state_dict(rest, strict=False)  # after the LLM: a saved visual expert wins over the fresh copy


# ---------------------------------------------------------------------------------------------
# The task every stage subclasses.


def load_text_tokenizer(path: str):
    """The stage's text tokenizer. A SentencePiece folder (Llama-2's tokenizer.model) is read as VILA's training
    reads it: the slow LlamaTokenizer with legacy=False (llava/train/train.py, `AutoTokenizer.from_pretrained(...,
    use_fast=False, legacy=False)`); a tokenizer.json folder (the mini world's) through transformers."""
    from model.text_tokenizer import load_text_tokenizer as load_folder

    if not Path(path).is_dir():
        raise FileNotFoundError(f"text_tokenizer {path} is not a local tokenizer folder (nothing is downloaded)")
    return load_folder(path, legacy=False)


def miniworld_data(root: str, output_dir: Path, info: DistInfo) -> dict[str, str]:
    """The mini world at `root` converted to VILA's layouts under OUTPUT/miniworld_data (once, on rank 0)."""
    from model.vila.data import write_miniworld_data
    from train.distributed import barrier

    out = Path(output_dir) / "miniworld_data"
    if info.is_main:
        write_miniworld_data(root, out)
    barrier()
    return write_miniworld_data(root, out)  # DONE exists: only the paths


class VilaStageTask(StatelessStage):
    unit = "tok"
    stage: int = 0
    name: str = ""

    def __init__(self, cfg: Any, output_dir: Path):
        cfg.model.validate()
        if cfg.seq_len > cfg.model.llm.max_position_embeddings:
            raise ValueError(f"seq_len={cfg.seq_len} exceeds model.llm.max_position_embeddings={cfg.model.llm.max_position_embeddings}")
        if cfg.seq_len <= cfg.model.tokens_per_image + 2:
            raise ValueError(f"seq_len={cfg.seq_len} leaves no room for text after one image ({cfg.model.tokens_per_image} positions)")
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.module: VilaTrainModule | None = None

    # -- subclasses -------------------------------------------------------------------------------------------
    def train_llm(self) -> bool | None:
        return None  # the stage's default (set_trainable)

    def miniworld(self) -> str:
        return self.cfg.data.miniworld

    def check_data(self) -> None:
        raise NotImplementedError

    def load_init(self, vila: nn.Module) -> None:
        raise NotImplementedError

    def build_samples(self, info: DistInfo):
        """A stream of `data.Segment` lists (or None: skipped)."""
        raise NotImplementedError

    # -- inputs -----------------------------------------------------------------------------------------------
    def tokenizer_path(self) -> str:
        if self.cfg.text_tokenizer:
            return self.cfg.text_tokenizer
        if self.miniworld():
            return str(Path(self.miniworld()) / "tokenizer")
        raise InputError("text_tokenizer is not set: a local tokenizer folder (Llama-2's), or set data.miniworld to use the mini world's")

    def check_miniworld(self) -> None:
        root = self.miniworld()
        if root and not (Path(root) / "DONE").is_file():
            raise InputError(f"data.miniworld={root}: no complete mini world there (build it: python -m harness.miniworld --root {root})")

    def check_inputs(self) -> None:
        self.check_miniworld()
        require_path(self.tokenizer_path(), "text_tokenizer", "a local tokenizer folder")
        self.check_data()

    def parameter_counts(self) -> tuple[int, int]:
        from model.vila.modeling_vila import build_vila

        vila = build_vila(self.cfg.model, device="meta")
        vila.set_trainable(self.stage, train_llm=self.train_llm())
        counts = [0, 0]
        for p in vila.parameters():
            counts[not p.requires_grad] += p.numel()
        return counts[0], counts[1]

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self, info: DistInfo) -> nn.Module:
        from model.vila.modeling_vila import build_vila

        vila = build_vila(self.cfg.model)
        self.load_init(vila)
        vila.set_trainable(self.stage, train_llm=self.train_llm())
        self.module = VilaTrainModule(vila)
        return self.module

    def block_types(self) -> tuple[type, ...]:
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return (LlamaDecoderLayer, CLIPEncoderLayer)

    def param_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"projector": [], "llm": [], "vision": []}
        for name, p in model.named_parameters():
            part = "projector" if name.startswith("mm_projector.") else "vision" if name.startswith("vision_tower.") else "llm"
            groups[part].append((name, p))
        return groups

    def checkpoint_exclude(self) -> tuple[str, ...]:
        return ()

    # -- data -------------------------------------------------------------------------------------------------
    def build_data(self, info: DistInfo, micro_batch_size: int):
        from model.vila.vision_tower import preprocess_images

        cfg = self.cfg
        tok = load_text_tokenizer(self.tokenizer_path())
        llm = cfg.model.llm
        if len(tok) > llm.vocab_size:
            raise ValueError(f"text_tokenizer {self.tokenizer_path()} has {len(tok)} ids > model.llm.vocab_size={llm.vocab_size}")

        def tokenize(s: str) -> list[int]:
            return tok(s, add_special_tokens=False)["input_ids"] if s else []

        # <s> first only if the tokenizer adds it, as the released `tokenizer_image_token` does (LLaMA-2's and the
        # mini world's do; Yi's, under VILA1.5-40B's hermes-2 template, does not, and the hermes-2 label count
        # depends on it).
        bos_id = llm.bos_token_id if adds_bos(tok) else None

        def to_encoded(segments: list[Segment] | Rows | None) -> list[Encoded] | None:
            """A sample's sequences: one, or one per row of a `Rows` sample; None (skipped, counted) if none is left."""
            if segments is None:
                return None
            rows = [r for r in map(encode_row, segments if isinstance(segments, Rows) else [segments]) if r is not None]
            return rows or None

        def encode_row(segments: list[Segment]) -> Encoded | None:
            out = encode(
                segments,
                tokenize,
                image_token_index=cfg.model.image_token_index,
                tokens_per_image=cfg.model.tokens_per_image,
                bos_id=bos_id,
                eos_id=llm.eos_token_id,
                max_len=cfg.seq_len,
                eos_text=tok.eos_token,  # the released datasets append tokenizer.eos_token to the text
            )
            if out is not None and out.images:
                out.images = list(preprocess_images(out.images, cfg.model.vision))
            return out

        # The micro-batch counts samples (draws of the blend); a `Rows` sample adds each of its rows to it.
        return Batched(Mapped(self.build_samples(info), to_encoded), micro_batch_size, _flatten)

    def units(self, batch: list[Encoded]) -> int:
        return sum(e.supervised_targets() for e in batch)

    def throughput_amount(self, batch: list[Encoded]) -> int:
        return sum(e.length for e in batch)


def _flatten(samples: list[list[Encoded]]) -> list[Encoded]:
    return [row for rows in samples for row in rows]


def require_files(patterns: list[str], key: str, miniworld: str) -> None:
    """Data files: each pattern must match; none at all needs data.miniworld."""
    import glob

    if not patterns and not miniworld:
        raise InputError(f"{key} is empty: set it to the data files (--set '{key}=[/data/*.json]') or set data.miniworld")
    for pattern in patterns:
        if not glob.glob(pattern):
            raise InputError(f"{key}: pattern {pattern!r} matches no file")

