"""Decoding with LaVIT: captions and VQA answers (text) and visual-token sampling with classifier-free guidance
(images). The evaluation adapter over these functions is `model/lavit/eval_adapter.py`.

Text decoding: beam search on `inputs_embeds` (left-padded [IMG] feats [/IMG] prompt) with every non-text id
suppressed, as the released code does, followed by the released post-processing (`released_processing.py`:
`cut_caption`, `clean_vqa_answer`; the adapter adds the released question normalisation, VizWiz answerability step
and lemmatisation when the task asks for them). `decoding="released"` scores beams as transformers 4.33 did for the
released numbers (`beam_search.py`); `"modern"` is the pinned transformers' own `generate`. The decoding settings
(decoding mode, beams, lengths, length penalty, top-k, CFG scale, ...) are arguments here and data of the evaluation
tasks (`eval/tasks.py`); nothing in this module supplies defaults.

Image sampling (App. A, Eq. 7) is our own loop, because it needs the unconditional stream:

    logp_c = log_softmax(l(y_t | prompt [IMG] y_<t)),  logp_u = log_softmax(l(y_t | [IMG] y_<t))
    score  = g * (logp_c - logp_u) + logp_u            (= logp_c when g = 1; what transformers'
                                                        UnbatchedClassifierFreeGuidanceLogitsProcessor computes)
    only visual ids (and [/IMG] once min_new_tokens are out) are allowed; temperature; top-k; sample.
    (The head is evaluated on the allowed ids only; see the comment in `sample_image_tokens` for why this samples
    the same distribution as Eq. 7 on full-vocabulary log-probabilities.)

The conditional and unconditional streams are ONE batch of 2B rows (the unconditional row is the single token [IMG],
left-padded to the prompt length) sharing one KV cache (`DynamicCache`), so each new token costs one forward of 2B
single-token rows. `use_cache=False` is the naive reference: the whole sequence is recomputed for every token.
Both paths draw their randomness the same way (one uniform per row per step, inverse-CDF over the top-k), so under
a fixed seed they emit identical tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from model.lavit import released_processing
from model.lavit.modeling_lavit import IGNORE_INDEX, LavitForCausalLM, llama_config, positions_from_mask

if TYPE_CHECKING:
    from PIL import Image


# ------------------------------------------------------------------------------------------------------------
# Text post-processing (released code)


def cut_caption(text: str) -> str:
    """Released captioner: strip, keep the text before the first '.'."""
    return released_processing.cut_caption(text)


def clean_vqa_answer(text: str) -> str:
    """Released VQA post-processing before lemmatisation (`released_processing.cut_answer`)."""
    return released_processing.cut_answer(text)


# ------------------------------------------------------------------------------------------------------------
# Visual-token sampling with classifier-free guidance


def cfg_log_probs(logp_cond: torch.Tensor, logp_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 7 on log-probabilities: g * (logp_cond - logp_uncond) + logp_uncond."""
    if scale == 1.0:
        return logp_cond  # exact, not just up to rounding
    return scale * (logp_cond - logp_uncond) + logp_uncond


@dataclass
class ImageSampling:
    """Settings of visual-token sampling; no defaults: they come from the t2i evaluation task."""

    top_k: int  # keep the k most likely visual ids (0 = all)
    temperature: float  # softmax temperature
    cfg_scale: float  # g of Eq. 7; 1.0 disables the unconditional stream
    min_new_tokens: int  # [/IMG] is not allowed before this many visual tokens
    max_new_tokens: int  # hard stop (an image is then closed without sampling [/IMG])


def draw_uniforms(generator: torch.Generator | list[torch.Generator] | None, n: int, device) -> torch.Tensor:
    """n uniforms in [0, 1): from one generator, or one from each of n per-row generators."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} rows")
        return torch.cat([torch.rand(1, generator=g, device=g.device) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def _sample_top_k(scores: torch.Tensor, top_k: int, temperature: float, uniforms: torch.Tensor) -> torch.Tensor:
    """scores (B, V) with -inf on forbidden ids -> one id per row, by inverse CDF of one uniform per row."""
    scores = scores / temperature
    k = min(top_k, scores.shape[-1]) if top_k > 0 else scores.shape[-1]
    values, indices = scores.topk(k, dim=-1)  # (b, k), sorted descending
    probs = torch.softmax(values.double(), dim=-1)  # -inf entries (fewer allowed ids than k) get 0
    cdf = probs.cumsum(-1)
    pick = torch.searchsorted(cdf, (uniforms.double() * cdf[:, -1]).unsqueeze(-1)).clamp(max=k - 1)  # (b, 1)
    return indices.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def sample_image_tokens(
    model: LavitForCausalLM,
    prompt_ids: list[torch.Tensor],
    sampling: ImageSampling,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
) -> list[torch.Tensor]:
    """Sample one image's visual ids (32002 + k, [/IMG] excluded) per prompt.

    prompt_ids: per prompt, its ids without BOS (released: add_special_tokens=False); [IMG] is appended here.
    Multi-modal prompts are ids too: an image in a prompt is its visual ids, without delimiters (released
    `multimodal_synthesis`; see `LavitEvalAdapter.multimodal_prompt_ids`).
    generator: one for the batch, or one per prompt (then a prompt's tokens depend on its own generator only, not
    on which other prompts share the batch).
    """
    vocab = model.vocab
    device = model.llm_device
    b = len(prompt_ids)
    use_cfg = sampling.cfg_scale != 1.0
    start = torch.tensor([vocab.img_start_id], device=device)

    # Rows: B conditional (prompt [IMG]) then, with CFG, B unconditional ([IMG] only), left-padded to one length.
    cond = [model.embed_ids(torch.cat([p.to(device).long(), start])) for p in prompt_ids]
    rows = cond + ([model.embed_ids(start)] * b if use_cfg else [])
    length = max(r.shape[0] for r in rows)
    pad = model.embed_ids(torch.tensor([model.lavit_config.llm.eos_token_id], device=device))  # (1, h)
    embeds = torch.stack([torch.cat([pad.expand(length - r.shape[0], -1), r]) for r in rows])  # (r, l, h)
    mask = torch.stack(
        [
            torch.cat([torch.zeros(length - r.shape[0], device=device), torch.ones(r.shape[0], device=device)])
            for r in rows
        ]
    ).long()  # (r, l)

    # Only [/IMG] and the visual ids can be sampled, and they are contiguous ([/IMG] = 32001, code k = 32002 + k):
    # the LM head is evaluated on that slice only. Eq. 7 on log-probabilities normalised over this slice differs
    # from Eq. 7 on full-vocabulary log-probabilities by a per-row constant (g (Z_u - Z_c) - Z_u in terms of the
    # log-normalisers), which temperature, top-k and the final softmax ignore: the sampling distribution is the same.
    head_slice = slice(vocab.img_end_id, vocab.size)
    head_weight = model.language_model.lm_head.weight[head_slice]  # (1 + K, h)
    head_bias = model.language_model.lm_head.bias
    head_bias = head_bias[head_slice] if head_bias is not None else None
    end_index = 0  # [/IMG] is the first row of the slice

    def step_logits(hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, head_weight, head_bias).float()  # (r, 1 + K)

    def last_hidden(inputs_embeds, attention_mask, position_ids, cache=None) -> torch.Tensor:
        out = model.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state[:, -1]  # (r, h)

    cache = None
    if use_cache:
        from transformers import DynamicCache

        cache = DynamicCache(config=llama_config(model.lavit_config))
        logits = step_logits(last_hidden(embeds, mask, positions_from_mask(mask), cache))  # (r, 1 + k)
        positions = positions_from_mask(mask)[:, -1:]  # (r, 1)
    generated = torch.empty(b, 0, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    lengths = torch.full((b,), -1, dtype=torch.long, device=device)
    for step in range(sampling.max_new_tokens):
        if not use_cache:
            # Naive reference: recompute every position of every row for this one token.
            new = generated.repeat(2, 1) if use_cfg else generated
            full_embeds = torch.cat([embeds, model.embed_ids(new)], dim=1)
            full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
            logits = step_logits(last_hidden(full_embeds, full_mask, positions_from_mask(full_mask)))
        logp = torch.log_softmax(logits, dim=-1)
        scores = cfg_log_probs(logp[:b], logp[b:], sampling.cfg_scale) if use_cfg else logp  # (b, 1 + k)
        if step < sampling.min_new_tokens:
            scores[:, end_index] = float("-inf")
        uniforms = draw_uniforms(generator, b, device)  # (b,)
        token = _sample_top_k(scores, sampling.top_k, sampling.temperature, uniforms) + vocab.img_end_id  # (b,) ids
        token = torch.where(finished, torch.full_like(token, vocab.img_end_id), token)
        newly_done = (token == vocab.img_end_id) & ~finished
        lengths = torch.where(newly_done, torch.full_like(lengths, step), lengths)
        finished |= newly_done
        generated = torch.cat([generated, token[:, None]], dim=1)
        if bool(finished.all()):
            break
        if use_cache:
            step_ids = token.repeat(2)[:, None] if use_cfg else token[:, None]  # (r, 1): both streams get the token
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions + 1
            logits = step_logits(last_hidden(model.embed_ids(step_ids), mask, positions, cache))
    lengths = torch.where(lengths < 0, torch.full_like(lengths, generated.shape[1]), lengths)
    return [generated[i, : int(lengths[i])] for i in range(b)]


def image_step_distribution(scores: torch.Tensor, vocab) -> torch.Tensor:
    """Full-vocabulary Eq. 7 scores (V,) -> the probability (1 + K,) of [/IMG] and each visual id that
    `sample_image_tokens` samples from at temperature 1 without top-k (for tests)."""
    return torch.softmax(scores[vocab.img_end_id : vocab.size].double(), -1)


@torch.no_grad()
def step_distribution_of_sampler(model: LavitForCausalLM, prompt_ids: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The sampler's own first-step distribution over [/IMG] + visual ids (slice head, slice log-softmax)."""
    vocab = model.vocab
    device = model.llm_device
    start = torch.tensor([vocab.img_start_id], device=device)
    head = model.language_model.lm_head.weight[vocab.img_end_id : vocab.size]
    rows = [torch.cat([prompt_ids.to(device), start]), start]
    logp = [
        torch.log_softmax(
            model.language_model.model(inputs_embeds=model.embed_ids(r)[None]).last_hidden_state[0, -1] @ head.T, -1
        )
        for r in rows
    ]
    return torch.softmax(cfg_log_probs(logp[0], logp[1], cfg_scale).double(), -1)


@torch.no_grad()
def first_step_log_probs(model: LavitForCausalLM, prompt_ids: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Eq. 7 scores (V,) of the first visual token after `prompt [IMG]` (for tests and inspection)."""
    vocab = model.vocab
    device = model.llm_device
    start = torch.tensor([vocab.img_start_id], device=device)
    cond = torch.log_softmax(
        model(inputs_embeds=model.embed_ids(torch.cat([prompt_ids.to(device), start]))[None]).logits[0, -1].float(), -1
    )
    uncond = torch.log_softmax(model(inputs_embeds=model.embed_ids(start)[None]).logits[0, -1].float(), -1)
    return cfg_log_probs(cond, uncond, cfg_scale)


# ------------------------------------------------------------------------------------------------------------
# Text generation (captions, VQA)


@torch.no_grad()
def generate_text(
    model: LavitForCausalLM,
    image_embeds: list[torch.Tensor],
    prompt_ids: list[torch.Tensor],
    *,
    num_beams: int,
    min_new_tokens: int,
    max_new_tokens: int,
    length_penalty: float,
    early_stopping: bool,
    decoding: str,
    eos_token_id: int | None = None,
) -> list[list[int]]:
    """Beam search after [IMG] image [/IMG] prompt; non-text ids are suppressed. Returns new token ids per sample.

    decoding: "modern" = transformers' `generate` (the pinned version's beam scoring); "released" = our beam search
    with transformers 4.33's scoring, which the released numbers were made with (`beam_search.py`)."""
    items = [model.understanding_item(e, p) for e, p in zip(image_embeds, prompt_ids)]
    return generate_text_from_items(
        model, items, num_beams=num_beams, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
        length_penalty=length_penalty, early_stopping=early_stopping, decoding=decoding, eos_token_id=eos_token_id,
    )  # fmt: skip


@torch.no_grad()
def generate_text_from_items(
    model: LavitForCausalLM,
    items: list,
    *,
    num_beams: int,
    min_new_tokens: int,
    max_new_tokens: int,
    length_penalty: float,
    early_stopping: bool,
    decoding: str,
    eos_token_id: int | None = None,
) -> list[list[int]]:
    """`generate_text` on prepared input sequences (`SequenceItem`s: an understanding item, or an interleaved one
    with several images, `LavitForCausalLM.interleaved_item`)."""
    from model.lavit.beam_search import DECODINGS, BeamSettings, beam_search, causal_lm_step

    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; expected one of {DECODINGS}")
    batch = model.collate(items)
    llm = model.lavit_config.llm
    eos = llm.eos_token_id if eos_token_id is None else eos_token_id
    if decoding == "released":
        settings = BeamSettings(
            num_beams=num_beams,
            min_new_tokens=min_new_tokens,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            suppress_ids=tuple(model.vocab.non_text_ids()),
        )
        step = causal_lm_step(model.language_model, batch.inputs_embeds, batch.attention_mask, num_beams)
        return [r.tokens for r in beam_search(step, len(items), settings, decoding="released")]
    output = model.language_model.generate(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        do_sample=False,
        num_beams=num_beams,
        min_new_tokens=min_new_tokens,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping and num_beams > 1,
        suppress_tokens=model.vocab.non_text_ids(),
        bos_token_id=llm.bos_token_id,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return [row.tolist() for row in sequences]
