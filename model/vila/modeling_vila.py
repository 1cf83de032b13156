"""VILA: CLIP vision tower + projector + LLaMA, images interleaved with text (paper §2, Fig. 2).

    input_ids   ... text ... <IMAGE_TOKEN_INDEX> ... text ... <IMAGE_TOKEN_INDEX> ...   (one placeholder per image)
    embeddings  ... emb(text) ... projector(vision(image 1)) ... emb(text) ... projector(vision(image 2)) ...
    labels      ... text ...      -100 x tokens_per_image    ... text ...      -100 x tokens_per_image

There are no image start/end tokens: an image is exactly its `tokens_per_image` projected features, and any number of
images may sit anywhere in the text (MMC4-style interleaving). `images` holds every image of the batch in order of
appearance (row by row, left to right). Rows are re-padded after the expansion (their lengths differ when their image
counts do): on the right for training, on the left for generation; position ids count real tokens only, so a padded
row computes what it would alone.

Ablations (config `ablation`):

- visual expert (Table 8): a trainable copy of every decoder layer's attention and MLP projections
  (`visual_expert.layers.N.{q,k,v,o,gate,up,down}_proj`) replaces the frozen LLM's projection at visual-token
  positions only (forward hooks on the LLM's Linear modules; text positions use the LLM's own weights). The LLM's
  parameter names are untouched, so a pretrained LLaMA loads as usual; `init_visual_expert_from_llm()` copies it.
- LoRA (Table 9): peft's LoRA layers injected into the LLM's linear layers (`...q_proj.base_layer.weight`,
  `...q_proj.lora_A.default.weight`); `load_llm_state_dict` maps plain LLaMA names onto them.

Which parameters train in which stage is part of the model (`set_trainable`); how they train is train/'s business.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness.config import from_dict, to_dict
from model.vila.configuration import IGNORE_INDEX, VilaConfig
from model.vila.projectors import Projector
from model.vila.vision_tower import VisionTower

EXPERT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STAGES = {0: "projector initialisation", 1: "visual language pre-training", 2: "visual instruction tuning (SFT)"}


class VilaHFConfig(PreTrainedConfig):
    """transformers config wrapper around the `VilaConfig` dataclass (stored as a plain dict in config.json)."""

    model_type = "vila"
    vila: dict | None = None

    @classmethod
    def from_vila_config(cls, config: VilaConfig) -> "VilaHFConfig":
        return cls(vila=to_dict(config))

    @property
    def vila_config(self) -> VilaConfig:
        return from_dict(VilaConfig, self.vila or {})


def llama_config(config: VilaConfig) -> LlamaConfig:
    llm = config.llm
    return LlamaConfig(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta,
        rope_scaling=dict(llm.rope_scaling) or None,
        hidden_act=llm.hidden_act,
        attention_bias=llm.attention_bias,
        initializer_range=llm.initializer_range,
        tie_word_embeddings=llm.tie_word_embeddings,
        bos_token_id=llm.bos_token_id,
        eos_token_id=llm.eos_token_id,
        pad_token_id=llm.pad_token_id,
        attn_implementation=llm.attn_implementation,
    )


def _route_visual(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on an LLM projection: the expert's output at the visual positions of the router's mask. The
    router and expert hang off the module as plain attributes (not sub-modules: the LLM's keys stay as they are),
    so a deep copy of the model routes to its own copies."""
    router, expert = module.__dict__["_visual_router"], module.__dict__["_visual_expert"]
    mask = router.mask
    x = args[0]
    if mask is None or x.shape[:-1] != mask.shape or not bool(mask.any()):
        return output
    output = output.clone()
    output[mask] = expert(x[mask]).to(output.dtype)
    return output


class VisualExpert(nn.Module):
    """Table 8's visual expert: per decoder layer, a copy of the attention and MLP projections that replaces the
    LLM's at visual positions. Routing: `mask` (B, T) is set by the model around an LLM call; a forward hook on each
    LLM projection swaps in the expert's output where the mask is true. An input whose leading shape is not the
    mask's (a cached decoding step: generated tokens are text) is left alone."""

    def __init__(self, llm: LlamaForCausalLM):
        super().__init__()
        self.mask: torch.Tensor | None = None
        self.layers = nn.ModuleList()
        for layer in llm.model.layers:
            experts = nn.ModuleDict()
            for name, module in layer.named_modules():
                short = name.rpartition(".")[2]
                if short in EXPERT_TARGETS and isinstance(module, nn.Linear):
                    experts[short] = copy.deepcopy(module)
                    module.__dict__["_visual_router"] = self
                    module.__dict__["_visual_expert"] = experts[short]
                    module.register_forward_hook(_route_visual)
            self.layers.append(experts)

    @torch.no_grad()
    def copy_from(self, llm: LlamaForCausalLM) -> None:
        for layer, experts in zip(llm.model.layers, self.layers):
            for name, module in layer.named_modules():
                short = name.rpartition(".")[2]
                if short in experts:
                    experts[short].load_state_dict(module.state_dict())


class VilaForCausalLM(PreTrainedModel):
    config_class = VilaHFConfig
    base_model_prefix = "vila"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "SiglipEncoderLayer"]

    def __init__(self, config: VilaHFConfig | VilaConfig):
        if isinstance(config, VilaConfig):
            config = VilaHFConfig.from_vila_config(config)
        super().__init__(config)
        cfg = config.vila_config
        cfg.validate()
        self.vila_config = cfg
        self.vision_tower = VisionTower(cfg.vision)
        self.mm_projector = Projector(cfg.projector, cfg.vision, cfg.llm.hidden_size)
        self.language_model = LlamaForCausalLM(llama_config(cfg))
        self.post_init()
        # Adapters after post_init: transformers' initialisation would otherwise re-draw LoRA's B (zero by design)
        # as a plain Linear of the LLaMA, and the expert must copy the LLM's final weights.
        self.visual_expert: VisualExpert | None = None
        if cfg.ablation.visual_expert:
            self.visual_expert = VisualExpert(self.language_model)
        if cfg.ablation.lora_rank:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=cfg.ablation.lora_rank,
                lora_alpha=cfg.ablation.lora_alpha,
                lora_dropout=cfg.ablation.lora_dropout,
                target_modules=list(cfg.ablation.lora_target_modules),
            )
            inject_adapter_in_model(lora, self.language_model)
        self.set_trainable(2)

    def _init_weights(self, module: nn.Module) -> None:
        # Every component initialises itself (CLIP and LLaMA in their constructors, torch defaults for the
        # projector, peft for LoRA: B = 0, so a fresh adapter changes nothing); the wrapper must not overwrite them.
        return

    # --------------------------------------------------------------------------------------------------------
    # Sizes and parts

    @property
    def tokens_per_image(self) -> int:
        return self.vila_config.tokens_per_image

    @property
    def image_token_index(self) -> int:
        return self.vila_config.image_token_index

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    @property
    def llm_device(self) -> torch.device:
        return self.get_input_embeddings().weight.device

    def load_llm_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True):
        """Load plain LLaMA weights (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, ...) into the LLM,
        whatever adapters are injected (LoRA keeps them in `...q_proj.base_layer.weight`); then re-copy the visual
        expert from them (an expert starts as the LLM it specialises)."""
        own = self.language_model.state_dict()
        mapped = {}
        for key, value in state.items():
            if key not in own:
                stem, _, leaf = key.rpartition(".")
                lora_key = f"{stem}.base_layer.{leaf}"
                key = lora_key if lora_key in own else key
            mapped[key] = value
        if strict:
            adapters = {k for k in own if ".lora_" in k}
            missing = sorted(k for k in own if k not in mapped and k not in adapters)
            unexpected = sorted(k for k in mapped if k not in own)
            if missing or unexpected:
                from model.weights import CheckpointLayoutError

                raise CheckpointLayoutError(
                    f"LLM weights do not match the LLaMA of this config: missing {missing[:8]} ({len(missing)}), "
                    f"unexpected {unexpected[:8]} ({len(unexpected)})"
                )
        result = self.language_model.load_state_dict(mapped, strict=False)
        if self.visual_expert is not None:
            self.init_visual_expert_from_llm()
        return result

    def init_visual_expert_from_llm(self) -> None:
        if self.visual_expert is None:
            raise ValueError("this model has no visual expert (ablation.visual_expert=false)")
        self.visual_expert.copy_from(self.language_model)

    # --------------------------------------------------------------------------------------------------------
    # Trainability (paper §2.1's three stages; the vision tower is frozen throughout)

    def set_trainable(self, stage: int, train_llm: bool | None = None) -> None:
        """Stage 0: projector only. Stage 1 (pre-training) and 2 (SFT): projector + LLM, i.e. all but the vision
        tower. `train_llm=False` keeps the LLM frozen in any stage (Table 1's ✗ columns: prompt tuning).
        'The LLM' is the full LLaMA, or only its LoRA adapters (Table 9), or, with the visual expert (Table 8),
        the expert copy while the LLaMA itself stays frozen."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; VILA's stages are {STAGES}")
        train_llm = stage >= 1 if train_llm is None else bool(train_llm)
        self.requires_grad_(False)
        self.mm_projector.requires_grad_(True)
        if not train_llm:
            return
        if self.visual_expert is not None:
            self.visual_expert.requires_grad_(True)
        elif self.vila_config.ablation.lora_rank:
            for name, param in self.language_model.named_parameters():
                if ".lora_" in name:
                    param.requires_grad_(True)
        else:
            self.language_model.requires_grad_(True)

    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: "projector", "llm" (LLaMA, LoRA adapters or visual expert), "vision"."""
        groups: dict[str, list[nn.Parameter]] = {"projector": [], "llm": [], "vision": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            part = "projector" if name.startswith("mm_projector.") else "vision" if name.startswith("vision_tower.") else "llm"
            groups[part].append(param)
        return groups

    # --------------------------------------------------------------------------------------------------------
    # Inputs

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) normalised pixels -> (n, tokens_per_image, llm.hidden_size)."""
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with contextlib.nullcontext() if tower_trains else torch.no_grad():
            features = self.vision_tower(images)
        projector_dtype = next(self.mm_projector.parameters()).dtype
        out = self.mm_projector(features.to(projector_dtype))
        return out.to(self.get_input_embeddings().weight.dtype)

    def prepare_multimodal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        padding_side: str = "right",
    ) -> dict[str, torch.Tensor | None]:
        """Expand each placeholder into its image's features. Returns inputs_embeds (B, T', H), attention_mask,
        position_ids, labels (or None) and visual_mask (B, T': True at image features), re-padded on
        `padding_side`. Pads (attention 0) are dropped first, so either input padding side works."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids of shape {tuple(input_ids.shape)}; expected (batch, length)")
        index = self.image_token_index
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        if int((input_ids[~keep] == index).sum()):
            raise ValueError(f"an image placeholder (id {index}) sits at a padded position (attention_mask 0)")
        n_placeholders = int((input_ids[keep] == index).sum())
        n_images = 0 if images is None else int(images.shape[0])
        if n_placeholders != n_images:
            raise ValueError(
                f"{n_placeholders} image placeholders (id {index}) in input_ids but {n_images} images; one per image"
            )
        features = self.encode_images(images) if n_images else None
        embed = self.get_input_embeddings()
        token_embeds = embed(input_ids.masked_fill(input_ids == index, 0))
        rows: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        image_i = 0
        for b in range(input_ids.shape[0]):
            ids, emb = input_ids[b][keep[b]], token_embeds[b][keep[b]]
            lab = labels[b][keep[b]] if labels is not None else None
            pieces, lab_pieces, vis_pieces = [], [], []
            start = 0
            for pos in (ids == index).nonzero().flatten().tolist() + [len(ids)]:
                pieces.append(emb[start:pos])
                vis_pieces.append(torch.zeros(pos - start, dtype=torch.bool, device=device))
                if lab is not None:
                    lab_pieces.append(lab[start:pos])
                if pos < len(ids):
                    feats = features[image_i]
                    image_i += 1
                    pieces.append(feats)
                    vis_pieces.append(torch.ones(len(feats), dtype=torch.bool, device=device))
                    if lab is not None:
                        lab_pieces.append(torch.full((len(feats),), IGNORE_INDEX, dtype=lab.dtype, device=device))
                start = pos + 1
            rows.append((torch.cat(pieces), torch.cat(lab_pieces) if lab is not None else None, torch.cat(vis_pieces)))
        length = max(len(r[0]) for r in rows)
        batch, hidden = len(rows), token_embeds.shape[-1]
        embeds = token_embeds.new_zeros(batch, length, hidden)
        attn = torch.zeros(batch, length, dtype=torch.long, device=device)
        out_labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device) if labels is not None else None
        visual = torch.zeros(batch, length, dtype=torch.bool, device=device)
        for b, (emb, lab, vis) in enumerate(rows):
            n = len(emb)
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            embeds[b, span] = emb
            attn[b, span] = 1
            visual[b, span] = vis
            if out_labels is not None:
                out_labels[b, span] = lab
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        return {
            "inputs_embeds": embeds,
            "attention_mask": attn,
            "position_ids": position_ids,
            "labels": out_labels,
            "visual_mask": visual,
        }

    @contextlib.contextmanager
    def _routing(self, visual_mask: torch.Tensor | None) -> Iterator[None]:
        if self.visual_expert is None:
            yield
            return
        self.visual_expert.mask = visual_mask
        try:
            yield
        finally:
            self.visual_expert.mask = None

    # --------------------------------------------------------------------------------------------------------
    # Forward, scoring, generation

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits over the expanded sequence (right-padded); `loss`: mean next-token cross-entropy over the labels
        that are not -100 (image positions never are supervised)."""
        inputs = self.prepare_multimodal(input_ids, attention_mask, labels, images, padding_side="right")
        with self._routing(inputs["visual_mask"]):
            out = self.language_model(
                inputs_embeds=inputs["inputs_embeds"],
                attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"],
                use_cache=False,
                **kwargs,
            )
        loss = None
        if inputs["labels"] is not None:
            logits = out.logits[:, :-1].float()
            target = inputs["labels"][:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits)

    def sequence_logprobs(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) sum of log p(label_t | everything before t) over the labels that are not -100."""
        inputs = self.prepare_multimodal(input_ids, attention_mask, labels, images, padding_side="right")
        with self._routing(inputs["visual_mask"]):
            logits = self.language_model(
                inputs_embeds=inputs["inputs_embeds"],
                attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"],
                use_cache=False,
            ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = inputs["labels"][:, 1:]
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (target != IGNORE_INDEX)).sum(-1)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_beams: int = 1,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, new) generated ids after each row's prompt (greedy, or sampling with temperature / nucleus top_p).
        Rows that finished are filled with `pad_token_id`. A cached loop over the LLM: the prompt (with its images)
        once, then one text token per step at the next position of each row."""
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams}: VILA's generation here is greedy or sampled (num_beams=1)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        llm_cfg = self.vila_config.llm
        eos = llm_cfg.eos_token_id if eos_token_id is None else eos_token_id
        pad = llm_cfg.pad_token_id if pad_token_id is None else pad_token_id
        inputs = self.prepare_multimodal(input_ids, attention_mask, None, images, padding_side="left")
        attn, positions = inputs["attention_mask"], inputs["position_ids"]
        with self._routing(inputs["visual_mask"]):
            out = self.language_model(
                inputs_embeds=inputs["inputs_embeds"], attention_mask=attn, position_ids=positions, use_cache=True
            )
        past = out.past_key_values
        logits = out.logits[:, -1].float()
        batch = attn.shape[0]
        done = torch.zeros(batch, dtype=torch.bool, device=attn.device)
        generated = []
        for step in range(max_new_tokens):
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            if do_sample:
                token = _sample(logits, temperature, top_p, generator)
            else:
                token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            generated.append(token)
            done |= token == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attn = torch.cat([attn, attn.new_ones(batch, 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.language_model(
                input_ids=token.unsqueeze(1), attention_mask=attn, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[:, -1].float()
        return torch.stack(generated, dim=1)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when sampling")
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def build_vila(config: VilaConfig, device: str | torch.device | None = None) -> VilaForCausalLM:
    """A VILA model of `config` (validated before anything is allocated); `device="meta"` for shapes only."""
    config.validate()
    if device is None:
        return VilaForCausalLM(config)
    with torch.device(device):
        return VilaForCausalLM(config)
