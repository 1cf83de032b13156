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

import weakref
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


def _choose_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, end_allowed: torch.Tensor, b: int, sampling: "ImageSampling"
) -> torch.Tensor:
    """Head logits (r, 1 + K) over [/IMG] + visual ids -> one sampled id per prompt (b,), all on the device: slice
    log-softmax, Eq. 7 mixing of the B conditional and B unconditional rows, [/IMG] forbidden unless `end_allowed`
    (a 0-dim bool tensor, so that a captured step does not depend on the step number), temperature, top-k, inverse
    CDF of one uniform per row. Returns ids relative to the slice (0 = [/IMG])."""
    logp = torch.log_softmax(logits, dim=-1)
    scores = cfg_log_probs(logp[:b], logp[b:], sampling.cfg_scale) if sampling.cfg_scale != 1.0 else logp  # (b, 1+K)
    scores[:, 0] = scores[:, 0].masked_fill(~end_allowed, float("-inf"))
    return _sample_top_k(scores, sampling.top_k, sampling.temperature, uniforms)


def _static_decode_step(
    model: LavitForCausalLM,
    cache,
    token_ids: torch.Tensor,
    positions: torch.Tensor,
    cache_position: torch.Tensor,
    step_mask: torch.Tensor,
    uniforms: torch.Tensor,
    end_allowed: torch.Tensor,
    sampling: "ImageSampling",
) -> torch.Tensor:
    """One decoding step on the static cache with fixed shapes and no host read: the step that `capture` compiles
    or records as a CUDA graph. token_ids (r, 1) the previous token of every row, positions (r, 1), cache_position
    (1,), step_mask (r, 1, 1, T) bool (True = attend; a 4-D mask goes to SDPA as is), uniforms (b,) -> the next
    token of each prompt, relative to the head slice (0 = [/IMG])."""
    vocab = model.vocab
    hidden = model.language_model.model(
        inputs_embeds=model.embed_ids(token_ids),
        attention_mask=step_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        cache_position=cache_position,
    ).last_hidden_state[:, -1]  # (r, h)
    head = model.language_model.lm_head
    bias = head.bias[vocab.img_end_id : vocab.size] if head.bias is not None else None
    logits = torch.nn.functional.linear(hidden, head.weight[vocab.img_end_id : vocab.size], bias).float()
    return _choose_tokens(logits, uniforms, end_allowed, uniforms.shape[0], sampling)


CAPTURES = ("none", "compile", "cudagraphs")
_compiled_steps: dict[tuple[str, str], Any] = {}
_static_caches: "weakref.WeakKeyDictionary[LavitForCausalLM, dict]" = weakref.WeakKeyDictionary()


def _decode_step_function(capture: str, backend: str):
    """The decoding step as run: eager, `torch.compile`d as one graph (`fullgraph=True`: a host read inside the step
    would be an error, not a silent graph break), or compiled with CUDA graphs (mode "reduce-overhead": each step is
    one graph replay). Compiled once per process, mode and backend."""
    if capture == "none":
        return _static_decode_step
    key = (capture, backend)
    if key not in _compiled_steps:
        options = {"mode": "reduce-overhead"} if capture == "cudagraphs" else {"backend": backend}
        _compiled_steps[key] = torch.compile(_static_decode_step, fullgraph=True, dynamic=False, **options)
    return _compiled_steps[key]


def _static_cache(model: LavitForCausalLM, rows: int, total: int, reuse: bool):
    """A StaticCache for `rows` rows of `total` positions; with `reuse`, the same object (reset) for the same model
    and sizes, so that a compiled step (whose guards hold on the cache object) is not recompiled on every call."""
    from transformers import StaticCache

    if not reuse:
        return StaticCache(config=llama_config(model.lavit_config), max_cache_len=total)
    per_model = _static_caches.setdefault(model, {})
    key = (rows, total, model.llm_device, model.language_model.lm_head.weight.dtype)  # the cache takes both lazily
    if key not in per_model:
        per_model[key] = StaticCache(config=llama_config(model.lavit_config), max_cache_len=total)
    cache = per_model[key]
    cache.reset()
    return cache


@torch.no_grad()
def sample_image_tokens(
    model: LavitForCausalLM,
    prompt_ids: list[torch.Tensor],
    sampling: ImageSampling,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    check_every: int | None = None,
    static_cache: bool = False,
    capture: str = "none",
    compile_backend: str = "inductor",
) -> list[torch.Tensor]:
    """Sample one image's visual ids (32002 + k, [/IMG] excluded) per prompt.

    prompt_ids: per prompt, its ids without BOS (released: add_special_tokens=False); [IMG] is appended here.
    Multi-modal prompts are ids too: an image in a prompt is its visual ids, without delimiters (released
    `multimodal_synthesis`; see `LavitEvalAdapter.multimodal_prompt_ids`).
    generator: one for the batch, or one per prompt (then a prompt's tokens depend on its own generator only, not
    on which other prompts share the batch).
    check_every: read "has every row finished?" back to the host only every this many steps (default: 1 on the
    CPU, 8 on accelerators, where each read is a device synchronisation that stalls the queue). The tokens do not
    depend on it (a finished row keeps emitting [/IMG], cut off at the end); only the generators may advance by up
    to check_every - 1 extra draws after the last row finished.
    static_cache (with use_cache): a transformers `StaticCache` of the final length and one fixed-size attention
    mask, so that every decoding step has the same shapes (the precondition of a captured step); same tokens.
    Each step after the first is `_static_decode_step`: forward, head, Eq. 7 and top-k sampling on the device.
    capture (with static_cache): "none" runs that step eagerly; "compile" runs it `torch.compile`d as one graph
    (`compile_backend`, e.g. "aot_eager" for a quick trace on CPU); "cudagraphs" (CUDA only) replays it as a CUDA
    graph (torch.compile mode "reduce-overhead"). The cache is then kept per model and size and reset per call.
    """
    if capture not in CAPTURES:
        raise ValueError(f"capture={capture!r}; expected one of {CAPTURES}")
    if capture != "none" and not (use_cache and static_cache):
        raise ValueError(f"capture={capture!r} needs use_cache=True and static_cache=True (fixed shapes)")
    vocab = model.vocab
    device = model.llm_device
    b = len(prompt_ids)
    use_cfg = sampling.cfg_scale != 1.0
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8
    if check_every < 1:
        raise ValueError(f"check_every={check_every}; expected >= 1")
    if capture == "cudagraphs" and device.type != "cuda":
        raise ValueError(f"capture='cudagraphs' needs the model on CUDA, not {device.type}")
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

    def step_logits(hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, head_weight, head_bias).float()  # (r, 1 + K)

    def last_hidden(inputs_embeds, attention_mask, position_ids, cache=None, cache_position=None) -> torch.Tensor:
        out = model.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            cache_position=cache_position,
        )
        return out.last_hidden_state[:, -1]  # (r, h)

    cache = None
    if use_cache and static_cache:
        # Every step has the same shapes (one fixed-size mask, a cache of max length written at cache_position):
        # what CUDA graphs / torch.compile need to capture a step once and replay it.
        total = length + sampling.max_new_tokens
        cache = _static_cache(model, mask.shape[0], total, reuse=capture != "none")
        full_mask = torch.zeros(mask.shape[0], total, dtype=mask.dtype, device=device)
        full_mask[:, :length] = mask
        cache_position = torch.arange(length, device=device)
        logits = step_logits(last_hidden(embeds, full_mask, positions_from_mask(mask), cache, cache_position))
        positions = positions_from_mask(mask)[:, -1:]  # (r, 1)
        cache_position = cache_position[-1:]
        step_mask = full_mask.bool()[:, None, None, :]  # (r, 1, 1, T): updated in place, one column per step
        decode_step = _decode_step_function(capture, compile_backend)
    elif use_cache:
        from transformers import DynamicCache

        cache = DynamicCache(config=llama_config(model.lavit_config))
        logits = step_logits(last_hidden(embeds, mask, positions_from_mask(mask), cache))  # (r, 1 + k)
        positions = positions_from_mask(mask)[:, -1:]  # (r, 1)
    end_flags = (torch.tensor(False, device=device), torch.tensor(True, device=device))  # made once: no copy per step
    generated = torch.full((b, sampling.max_new_tokens), vocab.img_end_id, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    lengths = torch.full((b,), -1, dtype=torch.long, device=device)
    steps = 0
    for step in range(sampling.max_new_tokens):
        if not use_cache:
            # Naive reference: recompute every position of every row for this one token.
            new = generated[:, :step].repeat(2, 1) if use_cfg else generated[:, :step]
            full_embeds = torch.cat([embeds, model.embed_ids(new)], dim=1)
            full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
            logits = step_logits(last_hidden(full_embeds, full_mask, positions_from_mask(full_mask)))
        uniforms = draw_uniforms(generator, b, device)  # (b,)
        end_allowed = end_flags[step >= sampling.min_new_tokens]
        if use_cache and static_cache and step > 0:  # forward + head + sampling in one (capturable) step
            if capture == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are consumed
            step_ids = token.repeat(2)[:, None] if use_cfg else token[:, None]  # (r, 1): both streams get the token
            positions = positions + 1
            cache_position = cache_position + 1
            step_mask[:, 0, 0, length + step - 1] = True
            chosen = decode_step(
                model, cache, step_ids, positions, cache_position, step_mask, uniforms, end_allowed, sampling
            )
        else:
            chosen = _choose_tokens(logits, uniforms, end_allowed, b, sampling)
        token = chosen + vocab.img_end_id  # (b,) ids
        token = torch.where(finished, torch.full_like(token, vocab.img_end_id), token)
        newly_done = (token == vocab.img_end_id) & ~finished
        lengths = torch.where(newly_done, torch.full_like(lengths, step), lengths)
        finished |= newly_done
        generated[:, step] = token
        steps = step + 1
        if steps % check_every == 0 and bool(finished.all()):  # the loop's only host read
            break
        if use_cache and not static_cache:
            step_ids = token.repeat(2)[:, None] if use_cfg else token[:, None]  # (r, 1): both streams get the token
            positions = positions + 1
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            logits = step_logits(last_hidden(model.embed_ids(step_ids), mask, positions, cache))
    lengths = torch.where(lengths < 0, torch.full_like(lengths, steps), lengths).tolist()
    return [generated[i, : lengths[i]].clone() for i in range(b)]


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
    from model.lavit.beam_search import DECODINGS, BeamSettings, beam_search, causal_lm_step, released_output_ids

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
        return released_output_ids(beam_search(step, len(items), settings, decoding="released"), max_new_tokens, eos)
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
