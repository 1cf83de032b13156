"""LaVIT: the unified vision-language model on top of the dynamic visual tokenizer (paper §3.2, §3.3, App. A/B.2).

One LLaMA (`LlamaForCausalLM`) over one vocabulary (`vocabulary.py`): text ids, [IMG], [/IMG], visual codes.

    [image; text]  (understanding)   inputs:  emb([IMG])  vit_proj(merger(X))_kept  emb([/IMG])  emb(text)
                                     targets: [IMG]  32002+codes  [/IMG]  text  </s>     (App. B.2)
    [text; image]  (generation)      inputs = targets: text  [IMG]  32002+codes  [/IMG]
    text only      (RedPajama)       inputs = targets: <s> text </s>

One cross-entropy over every supervised position through the shared LM head (Eq. 6). Sequences in a batch are
left-padded (as in the released code: pads are </s> embeddings with attention mask 0) and position ids count only
real tokens, so a padded row sees exactly what it would see alone, and `generate` (which derives positions from the
attention mask the same way) continues it consistently.

Two token mergers exist on purpose. The stage-1 tokenizer's merger (`visual_tokenizer.causal_encoder`) produces the
discrete codes: it is frozen in stage 2 because the codes are the targets. The understanding path feeds the LLM
*continuous* merger outputs, and that merger + `vit_proj` are trained with the LLM in stage 2; the release ships
them separately (`language_model/visual_weight.bin`). `understanding_encoder` holds that LLM-tuned copy, initialised
from the tokenizer's merger.

Ablations (config `ablation.*`): regression objective for visual tokens (Table 3a, Emu-style head on the next
continuous visual embedding), quantized understanding input (Table 7a), frozen LLM (Table 7b). Tokenizer-side
ablations (fixed length, bidirectional merger, no merger) are flags of the tokenizer config.

Table 3a "Regression" replaces "the next visual token's code" by "the next visual embedding" (§4.3, like Emu). The
target of a visual slot is the frozen stage-1 merger's continuous part feature X_hat_r (width D) of that slot: the
quantizer's input, i.e. exactly what is classified into a code in the default setting, and the continuous token
§3.2 feeds the LLM. It comes from the same frozen tokenizer as the codes (`stage1_part_features`), so the target
never moves with the trained understanding merger (no target collapse). In [text; image] the image enters as
vit_proj(X_hat_r) (no codes exist in this setting); in [image; text] the inputs stay the understanding merger's.
Per slot the loss is the mean over D of the squared error ("mse") or 1 - cosine ("cosine"), next to the text CE.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from harness.config import from_dict, to_dict
from model.lavit.configuration import LavitConfig
from model.lavit.vocabulary import LavitVocabulary

IGNORE_INDEX = -100  # label of positions that are not supervised (pads, continuous inputs in regression mode)


class LavitHFConfig(PreTrainedConfig):
    """transformers config wrapper around the `LavitConfig` dataclass (stored as a plain dict in config.json)."""

    model_type = "lavit"
    lavit: dict | None = None

    @classmethod
    def from_lavit_config(cls, config: LavitConfig) -> "LavitHFConfig":
        return cls(lavit=to_dict(config))

    @property
    def lavit_config(self) -> LavitConfig:
        return from_dict(LavitConfig, self.lavit or {})


def llama_config(config: LavitConfig) -> LlamaConfig:
    """The transformers LlamaConfig of LaVIT's LLM (vocabulary = text + [IMG] + [/IMG] + K codes)."""
    llm = config.llm
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta,
        initializer_range=llm.initializer_range,
        tie_word_embeddings=llm.tie_word_embeddings,
        bos_token_id=llm.bos_token_id,
        eos_token_id=llm.eos_token_id,
        # No pad id: an nn.Embedding padding_idx would be </s> (the released pad), whose row would then be zeroed at
        # init and never get a gradient, although </s> is a real input (it ends every document). Pads are handled
        # by `collate` (</s> embeddings under attention mask 0) and `generate` gets its pad id explicitly.
        pad_token_id=None,
        attn_implementation=llm.attn_implementation,
    )


def text_llama_config(config: LavitConfig) -> LlamaConfig:
    """LaVIT's LlamaConfig with the text vocabulary only (llm.text_vocab_size rows): the text-only LLM that stage 2
    starts from (the mini world's `llm_pretrain`) and that its runs load as."""
    text = llama_config(config)
    text.vocab_size = config.llm.text_vocab_size
    return text


class UnderstandingEncoder(nn.Module):
    """The LLM-tuned token merger + `vit_proj` of the understanding path (keys = `visual_weight.bin`'s)."""

    def __init__(self, causal_encoder: nn.Module, vit_proj: nn.Linear):
        super().__init__()
        self.causal_encoder = causal_encoder
        self.vit_proj = vit_proj

    def forward(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """features (B, N, D) raw encoder output, keep (B, N) -> (B, N, D) merged part features (all positions)."""
        return self.causal_encoder(features, keep)


@dataclass
class SequenceItem:
    """One training/inference sequence before padding."""

    embeds: torch.Tensor  # (L, H) LLM input embeddings
    labels: torch.Tensor  # (L,) target id at each position (model shifts), IGNORE_INDEX where unsupervised
    regression_targets: torch.Tensor | None = None  # (L, D) continuous visual targets (Table 3a ablation)
    regression_mask: torch.Tensor | None = None  # (L,) bool, True where regression_targets hold a target


@dataclass
class LavitBatch:
    """A left-padded batch ready for `LavitForCausalLM.forward`."""

    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    position_ids: torch.Tensor  # (B, L) positions of real tokens, 0 on pads
    labels: torch.Tensor  # (B, L)
    regression_targets: torch.Tensor | None = None  # (B, L, D)
    regression_mask: torch.Tensor | None = None  # (B, L)


@dataclass
class LavitOutput(ModelOutput):
    loss: torch.Tensor | None = None  # ce_loss (+ regression_loss in the Table 3a ablation)
    ce_loss: torch.Tensor | None = None  # one cross-entropy over all supervised text and visual positions
    regression_loss: torch.Tensor | None = None  # Table 3a ablation only
    logits: torch.Tensor | None = None  # (B, L, V)
    past_key_values: object | None = None
    hidden_states: torch.Tensor | None = None  # (B, L, H) last hidden states


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens (what `generate` derives from a left-padded mask)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


class LavitForCausalLM(PreTrainedModel):
    config_class = LavitHFConfig
    base_model_prefix = "lavit"
    main_input_name = "inputs_embeds"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: LavitHFConfig):
        super().__init__(config)
        from model.lavit.tokenizer import DynamicVisualTokenizer, build_tokenizer

        cfg = config.lavit_config
        cfg.validate()
        self.lavit_config = cfg
        self.vocab = LavitVocabulary(cfg.llm.text_vocab_size, cfg.tokenizer.codebook_size)
        self.visual_tokenizer: DynamicVisualTokenizer = build_tokenizer(cfg.tokenizer)
        self.understanding_encoder = UnderstandingEncoder(
            copy.deepcopy(self.visual_tokenizer.causal_encoder), copy.deepcopy(self.visual_tokenizer.vit_proj)
        )
        self.language_model = LlamaForCausalLM(llama_config(cfg))
        self.regression_head = None
        if cfg.ablation.visual_objective == "regression":
            # Emu-style: predict the next continuous visual embedding (merger output, width D) from the hidden state.
            self.regression_head = nn.Linear(cfg.llm.hidden_size, cfg.tokenizer.encoder_width)
            nn.init.normal_(self.regression_head.weight, std=cfg.llm.initializer_range)
            nn.init.zeros_(self.regression_head.bias)
        self.pixel_decoder = None
        if cfg.pixel_decoder.enabled:
            from model.lavit.pixel_decoder import PixelDecoder

            if cfg.pixel_decoder.init_from:  # §3.3: the U-Net starts from Stable Diffusion 1.5
                self.pixel_decoder = PixelDecoder.from_stable_diffusion(
                    cfg.pixel_decoder, cfg.pixel_decoder.init_from, context_dim=cfg.tokenizer.unet_context_dim
                )
            else:
                self.pixel_decoder = PixelDecoder(cfg.pixel_decoder, context_dim=cfg.tokenizer.unet_context_dim)
        self.post_init()
        self.set_stage2_trainable()

    def _init_weights(self, module: nn.Module) -> None:
        # Every component initialises itself (LLaMA by its own post_init, the tokenizer by its init_std, diffusers
        # modules by their defaults); the wrapper must not overwrite them.
        return

    # --------------------------------------------------------------------------------------------------------
    # Trainability (stage 2). Which parameters learn is part of the model's definition (Table 7b's ablation);
    # *how* (optimizer, FSDP, checkpointing) is train/'s business.

    def set_stage2_trainable(self) -> None:
        """Stage 2: the tokenizer (codes = targets) and the pixel decoder are frozen; the understanding merger,
        `vit_proj` and (unless `ablation.freeze_llm`, Table 7b) the LLM train. With quantized understanding inputs
        (Table 7a) the understanding merger feeds nothing, so it is frozen too (unless the regression objective
        reads continuous features for [text; image])."""
        ablation = self.lavit_config.ablation
        self.visual_tokenizer.requires_grad_(False)
        if self.pixel_decoder is not None:
            self.pixel_decoder.requires_grad_(False)
        continuous = ablation.understanding_input == "continuous" or ablation.visual_objective == "regression"
        self.understanding_encoder.requires_grad_(continuous)
        self.language_model.requires_grad_(not self.lavit_config.ablation.freeze_llm)
        if self.regression_head is not None:
            self.regression_head.requires_grad_(True)

    def set_pixel_decoder_trainable(self) -> None:
        """Stage 1b (§3.3: U-Net fine-tuned after the tokenizer): only the U-Net learns."""
        self.requires_grad_(False)
        if self.pixel_decoder is None:
            raise ValueError("pixel_decoder.enabled=False: there is no pixel decoder to train")
        self.pixel_decoder.unet.requires_grad_(True)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split by learning rate (Table 9: LR of LLM 5e-5, of the visual part 1.5e-4)."""
        llm = [p for p in self.language_model.parameters() if p.requires_grad]
        visual = [p for p in self.understanding_encoder.parameters() if p.requires_grad]
        if self.regression_head is not None:
            visual += list(self.regression_head.parameters())
        return {"llm": llm, "visual": visual}

    # --------------------------------------------------------------------------------------------------------
    # Embeddings

    @property
    def llm_device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        shared = getattr(self, "_shared_embedding", None)
        if shared is not None:  # rows of the one embedding call of `shared_embedding`
            unique, table = shared
            ids = ids.to(unique.device)
            index = torch.searchsorted(unique, ids).clamp(max=unique.numel() - 1)
            torch._assert_async((unique[index] == ids).all(), "embed_ids: an id outside shared_embedding's ids")
            return table[index]
        return self.language_model.get_input_embeddings()(ids)

    @contextmanager
    def shared_embedding(self, ids: torch.Tensor):
        """Within this context `embed_ids(x)`, for any x drawn from `ids`, reads rows of one embedding call over
        unique(ids). Building a training batch calls `embed_ids` once per sequence piece; each of those calls would
        otherwise give the embedding matrix its own dense (V, H) gradient in backward (~400 MB in bf16 at 7B scale),
        while the rows gathered from one shared call back-propagate through a (unique ids, H) table into one.
        Values and gradients are those of the separate calls (up to float summation order)."""
        unique = torch.unique(ids.to(self.llm_device).long())  # sorted
        self._shared_embedding = (unique, self.language_model.get_input_embeddings()(unique))
        try:
            yield
        finally:
            self._shared_embedding = None

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        selection: Literal["deterministic", "sampled"] = "deterministic",
        generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per image
        need_codes: bool = True,
        need_part_features: bool = False,
    ) -> "EncodedImages":
        """pixel_values (B, 3, H, W) -> per image: kept continuous part features (understanding merger), their LLM
        input embeddings and (if `need_codes`) their discrete codes from the frozen stage-1 tokenizer; with
        `need_part_features` also the frozen stage-1 part features (Table 3a's regression targets).

        One selection (keep mask) is shared by both mergers, so code i supervises continuous slot i."""
        tok = self.visual_tokenizer
        with torch.no_grad():  # stage-1 parts are frozen in stage 2
            features = tok.encode_features(pixel_values)  # (b, n, d)
            if keep_mask is None and isinstance(generator, (list, tuple)):  # one noise stream per image
                log_probs = tok.selector_log_probs(features)
                keep = torch.cat([tok.select(log_probs[i : i + 1], selection, g) for i, g in enumerate(generator)])
            elif keep_mask is None:
                keep = tok.select(tok.selector_log_probs(features), selection, generator)  # (b, n) float 0/1
            else:
                keep = self._checked_keep(keep_mask, features)
            codes = part = None
            if need_codes or need_part_features or self.lavit_config.ablation.understanding_input == "quantized":
                part = self._stage1_part_features(features, keep)  # list of (k_i, d)
                codes = tok.quantize_features(part)
            if not need_part_features:
                part = None
        merged = self.understanding_encoder(features, keep.to(features.dtype))  # (b, n, d)
        flat, lengths = tok.gather_kept_flat(merged, keep)  # (sum k_i, d): one call per layer for the whole batch
        kept_features = list(flat.split(lengths))  # list of (k_i, d)
        if self.lavit_config.ablation.understanding_input == "quantized":
            # Table 7a "Quantized": the image enters as its visual-code ids, i.e. the LLM's own embedding rows
            # 32002 + k. These rows are what [text; image] training learns for the same codes, so no new module is
            # added and an image is read in exactly the representation the LLM generates it in.
            ids = self.vocab.code_to_id(torch.cat(codes).to(self.llm_device)) if codes else None
            llm_embeds = list(self.embed_ids(ids).split(lengths)) if codes else []
        else:
            llm_embeds = list(self.understanding_encoder.vit_proj(flat).split(lengths))  # list of (k_i, h)
        return EncodedImages(
            keep_mask=keep > 0.5, kept_features=kept_features, llm_embeds=llm_embeds, codes=codes, part_features=part
        )

    @torch.no_grad()
    def stage1_part_features(self, pixel_values: torch.Tensor, keep_mask: torch.Tensor) -> list[torch.Tensor]:
        """Frozen stage-1 merger outputs at the kept positions, per image (K_i, D): the continuous visual tokens
        X_hat_r that the quantizer turns into codes; the targets of Table 3a's regression objective."""
        tok = self.visual_tokenizer
        features = tok.encode_features(pixel_values)  # (b, n, d)
        return self._stage1_part_features(features, self._checked_keep(keep_mask, features))

    def _stage1_part_features(self, features: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        tok = self.visual_tokenizer
        return [f.detach() for f in tok.gather_kept(tok.merge(features, keep), keep)]

    @staticmethod
    def _checked_keep(keep_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if tuple(keep_mask.shape) != tuple(features.shape[:2]):
            raise ValueError(f"keep_mask must have shape {tuple(features.shape[:2])}, got {tuple(keep_mask.shape)}")
        return keep_mask.to(device=features.device, dtype=torch.float32)

    def regression_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Table 3a: hidden (m, H) states of the positions *before* m visual slots, targets (m, D) their continuous
        visual embeddings -> (m,) per-slot loss (mean over D of the squared error, or 1 - cosine similarity)."""
        if self.regression_head is None:
            raise ValueError("regression_losses needs ablation.visual_objective='regression' (no regression head built)")
        predicted = self.regression_head(hidden).float()  # (m, d)
        targets = targets.float()
        if self.lavit_config.ablation.regression_loss == "mse":
            return (predicted - targets).pow(2).mean(dim=-1)
        return 1.0 - F.cosine_similarity(predicted, targets, dim=-1)

    # --------------------------------------------------------------------------------------------------------
    # Sequence building

    def understanding_item(
        self,
        image_embeds: torch.Tensor,
        text_ids: torch.Tensor,
        codes: torch.Tensor | None = None,
        append_eos: bool = False,
        supervise_text: bool = True,
        continuous_features: torch.Tensor | None = None,
    ) -> SequenceItem:
        """[image; text]: emb([IMG]) image_embeds (k, h) emb([/IMG]) emb(text_ids) [</s>].

        `text_ids` carry no BOS (the released code tokenizes prompts with add_special_tokens=False). Labels: the
        visual slots predict their codes when `codes` are given and the config supervises them (App. B.2).
        Table 3a "Regression" ablation: the visual slots regress `continuous_features` (k, d) instead (if given)
        and only [/IMG] keeps a CE target before the text."""
        device = self.llm_device
        v = self.vocab
        text_ids = text_ids.to(device).long()
        if append_eos:
            text_ids = torch.cat([text_ids, text_ids.new_tensor([self.lavit_config.llm.eos_token_id])])
        delimiters = self.embed_ids(torch.tensor([v.img_start_id, v.img_end_id], device=device))  # (2, h)
        embeds = torch.cat(
            [delimiters[:1], image_embeds.to(delimiters.dtype), delimiters[1:], self.embed_ids(text_ids)]
        )
        k = image_embeds.shape[0]
        ablation = self.lavit_config.ablation
        if ablation.visual_objective == "regression" and ablation.supervise_image_tokens_in_understanding:
            start = torch.full((k + 2,), IGNORE_INDEX, device=device)
            start[-1] = v.img_end_id
            text_labels = text_ids if supervise_text else torch.full_like(text_ids, IGNORE_INDEX)
            labels = torch.cat([start.long(), text_labels])
            if continuous_features is None:
                return SequenceItem(embeds=embeds, labels=labels)
            targets = torch.zeros(embeds.shape[0], continuous_features.shape[-1], device=device)
            targets[1 : k + 1] = continuous_features.detach().to(targets.dtype)
            mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=device)
            mask[1 : k + 1] = True
            return SequenceItem(embeds=embeds, labels=labels, regression_targets=targets, regression_mask=mask)
        if codes is not None and ablation.supervise_image_tokens_in_understanding:
            if codes.numel() != k:
                raise ValueError(f"{codes.numel()} codes for {k} visual embeddings")
            image_ids = v.code_to_id(codes.to(device))
            start = torch.cat([image_ids.new_tensor([v.img_start_id]), image_ids, image_ids.new_tensor([v.img_end_id])])
        else:  # image as a pure condition: nothing before the text is supervised
            start = torch.full((k + 2,), IGNORE_INDEX, device=device)
        text_labels = text_ids if supervise_text else torch.full_like(text_ids, IGNORE_INDEX)
        return SequenceItem(embeds=embeds, labels=torch.cat([start.long(), text_labels]))

    def generation_item(
        self,
        text_ids: torch.Tensor,
        codes: torch.Tensor,
        continuous_features: torch.Tensor | None = None,
    ) -> SequenceItem:
        """[text; image]: text [IMG] 32002+codes [/IMG], all positions supervised with one CE.

        Table 3a "Regression" ablation (`continuous_features` (k, d) given): the image enters as continuous
        vit_proj(features); the visual slots are regressed (next continuous embedding), [IMG]/[/IMG]/text use CE."""
        device = self.llm_device
        v = self.vocab
        text_ids = text_ids.to(device).long()
        if self.lavit_config.ablation.visual_objective == "regression":
            if continuous_features is None:
                raise ValueError("ablation.visual_objective='regression' needs continuous_features for [text; image]")
            k, d = continuous_features.shape
            delimiters = self.embed_ids(torch.tensor([v.img_start_id, v.img_end_id], device=device))
            image_embeds = self.understanding_encoder.vit_proj(continuous_features)  # (k, h)
            embeds = torch.cat([self.embed_ids(text_ids), delimiters[:1], image_embeds, delimiters[1:]])
            labels = torch.cat(
                [
                    text_ids,
                    torch.tensor([v.img_start_id], device=device),
                    torch.full((k,), IGNORE_INDEX, device=device),
                    torch.tensor([v.img_end_id], device=device),
                ]
            ).long()
            n_text = text_ids.numel() + 1
            targets = torch.zeros(embeds.shape[0], d, device=device, dtype=continuous_features.dtype)
            targets[n_text : n_text + k] = continuous_features.detach()
            mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=device)
            mask[n_text : n_text + k] = True
            return SequenceItem(embeds=embeds, labels=labels, regression_targets=targets, regression_mask=mask)
        ids = torch.cat(
            [
                text_ids,
                torch.tensor([v.img_start_id], device=device),
                v.code_to_id(codes.to(device)),
                torch.tensor([v.img_end_id], device=device),
            ]
        )
        return SequenceItem(embeds=self.embed_ids(ids), labels=ids)

    def interleaved_item(self, parts: list[torch.Tensor]) -> SequenceItem:
        """An in-context prompt: text and images in reading order, nothing supervised. A 1-D tensor is text ids (no
        BOS), a 2-D tensor (k, h) an image's LLM inputs, entered as in `understanding_item`: emb([IMG]) image
        emb([/IMG]). [image, text] gives exactly the understanding input of that image and text."""
        device = self.llm_device
        v = self.vocab
        delimiters = self.embed_ids(torch.tensor([v.img_start_id, v.img_end_id], device=device))  # (2, h)
        pieces = []
        for part in parts:
            if part.dim() == 1:
                pieces.append(self.embed_ids(part.to(device).long()))
            else:
                pieces += [delimiters[:1], part.to(device=device, dtype=delimiters.dtype), delimiters[1:]]
        if not pieces:
            raise ValueError("an interleaved prompt needs at least one text or image part")
        embeds = torch.cat(pieces)
        return SequenceItem(embeds=embeds, labels=torch.full((embeds.shape[0],), IGNORE_INDEX, device=device, dtype=torch.long))

    def text_item(self, ids: torch.Tensor, supervise: bool = True) -> SequenceItem:
        """Text only (RedPajama mixing, MMLU scoring): ids as given (normally <s> ... )."""
        ids = ids.to(self.llm_device).long()
        return SequenceItem(embeds=self.embed_ids(ids), labels=ids if supervise else torch.full_like(ids, IGNORE_INDEX))

    def collate(self, items: list[SequenceItem]) -> LavitBatch:
        """Left-pad to the longest item with </s> embeddings (released padding), mask 0, label IGNORE_INDEX."""
        if not items:
            raise ValueError("collate needs at least one sequence")
        device = self.llm_device
        lengths = [it.embeds.shape[0] for it in items]
        length = max(lengths)
        pad = self.embed_ids(torch.tensor([self.lavit_config.llm.eos_token_id], device=device))[0]  # (h,)
        embeds, masks, labels = [], [], []
        any_regression = any(it.regression_targets is not None for it in items)
        reg_t, reg_m = [], []
        reg_dim = next((it.regression_targets.shape[-1] for it in items if it.regression_targets is not None), 0)
        for it, n in zip(items, lengths):
            p = length - n
            embeds.append(torch.cat([pad.expand(p, -1).to(it.embeds.dtype), it.embeds]))
            masks.append(
                torch.cat(
                    [torch.zeros(p, dtype=torch.long, device=device), torch.ones(n, dtype=torch.long, device=device)]
                )
            )
            labels.append(
                torch.cat([torch.full((p,), IGNORE_INDEX, dtype=torch.long, device=device), it.labels.long()])
            )
            if any_regression:
                t = (
                    it.regression_targets
                    if it.regression_targets is not None
                    else torch.zeros(n, reg_dim, device=device)
                )
                m = (
                    it.regression_mask
                    if it.regression_mask is not None
                    else torch.zeros(n, dtype=torch.bool, device=device)
                )
                reg_t.append(torch.cat([torch.zeros(p, reg_dim, device=device, dtype=t.dtype), t]))
                reg_m.append(torch.cat([torch.zeros(p, dtype=torch.bool, device=device), m]))
        mask = torch.stack(masks)  # (b, l)
        return LavitBatch(
            inputs_embeds=torch.stack(embeds),  # (b, l, h)
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            labels=torch.stack(labels),
            regression_targets=torch.stack(reg_t) if any_regression else None,
            regression_mask=torch.stack(reg_m) if any_regression else None,
        )

    # --------------------------------------------------------------------------------------------------------
    # Forward and loss

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        regression_targets: torch.Tensor | None = None,
        regression_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> LavitOutput:
        """One causal LM pass. labels (B, L) are aligned with the inputs (position t's label is token t; the
        shift happens here). Returns the mean CE over supervised positions (+ regression loss in Table 3a's
        ablation)."""
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if position_ids is None and past_key_values is None:
            position_ids = positions_from_mask(attention_mask)
        out = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state  # (b, l, h)
        head_input = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.language_model.lm_head(head_input)  # (b, l, v)
        ce_loss = regression_loss = loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()  # (b, l-1, v)
            shift_labels = labels[:, 1:]
            if bool((shift_labels != IGNORE_INDEX).any()):
                ce_loss = F.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]),
                    shift_labels.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                )
            else:  # nothing supervised (keeps the graph for DDP/FSDP)
                ce_loss = shift_logits.sum() * 0.0
            loss = ce_loss
        if regression_targets is not None:
            if self.regression_head is None:
                raise ValueError("regression_targets given but ablation.visual_objective is not 'regression'")
            mask = regression_mask[:, 1:]  # position t-1 predicts the embedding of slot t
            per_slot = self.regression_losses(hidden[:, :-1][mask], regression_targets[:, 1:][mask])  # (m,)
            regression_loss = per_slot.mean() if per_slot.numel() else self.regression_head.weight.sum() * 0.0
            loss = regression_loss if loss is None else loss + regression_loss
        return LavitOutput(
            loss=loss,
            ce_loss=ce_loss,
            regression_loss=regression_loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=hidden,
        )

    def loss_on(self, items: list[SequenceItem]) -> LavitOutput:
        batch = self.collate(items)
        return self(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            labels=batch.labels,
            regression_targets=batch.regression_targets,
            regression_mask=batch.regression_mask,
        )

    # --------------------------------------------------------------------------------------------------------
    # Tokens -> pixels

    @torch.no_grad()
    def decode_visual_ids(
        self,
        visual_ids: list[torch.Tensor],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Sampled visual ids (32002+k, one tensor per image) -> images (B, 3, H, W) in [0, 1]."""
        if self.pixel_decoder is None:
            raise ValueError("this model was built with pixel_decoder.enabled=False; it cannot render images")
        codes = [self.vocab.id_to_code(ids) for ids in visual_ids]
        empty = [i for i, c in enumerate(codes) if c.numel() == 0]
        if empty:
            raise ValueError(f"images {empty} have no visual tokens; raise the t2i task's generation min_new_tokens")
        context = self.visual_tokenizer.decoder_context([c.to(self.llm_device) for c in codes])  # (b, n, c)
        return self.pixel_decoder.sample(
            context, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator
        )


@dataclass
class EncodedImages:
    keep_mask: torch.Tensor  # (B, N) bool
    kept_features: list[torch.Tensor]  # per image (K_i, D): understanding-merger outputs at kept positions
    llm_embeds: list[torch.Tensor]  # per image (K_i, H): what the LLM reads
    codes: list[torch.Tensor] | None  # per image (K_i,): stage-1 codes of the same kept positions
    part_features: list[torch.Tensor] | None = None  # per image (K_i, D): frozen stage-1 merger outputs (Table 3a)
