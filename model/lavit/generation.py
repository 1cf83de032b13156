"""Decoding with LaVIT: captions and VQA answers (text), visual-token sampling with classifier-free guidance
(images), and `LavitRunner`, the evaluation adapter (`eval/interface.py`: caption / answer / generate_images /
score_text).

Text decoding: beam search on `inputs_embeds` (left-padded [IMG] feats [/IMG] prompt) with every non-text id
suppressed, as the released code does. Captions: no prompt, 2 beams, 8-36 new tokens, cut at the first '.'. VQA:
"Question: {} Answer:", 5 beams, 2-10 new tokens, length_penalty 0, the released answer cuts and (when spaCy is
installed) lemmatisation, optionally the released question normalisation and VizWiz answerability step
(`released_processing.py`). `decoding="released"` (the default, `GenerationDefaults.text_decoding`) scores beams as
transformers 4.33 did for the released numbers (`beam_search.py`); `"modern"` is the pinned transformers' own
`generate`. The keep mask is drawn with hard Gumbel noise as released ("gumbel", seeded) or by argmax ("argmax").

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
    top_k: int = 50  # keep the k most likely visual ids (FID protocol: 300)
    temperature: float = 1.0  # softmax temperature
    cfg_scale: float = 1.5  # g of Eq. 7; 1.0 disables the unconditional stream
    min_new_tokens: int = 20  # [/IMG] is not allowed before this many visual tokens
    max_new_tokens: int = 200  # hard stop (an image is then closed without sampling [/IMG])


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
    sampling: ImageSampling | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
) -> list[torch.Tensor]:
    """Sample one image's visual ids (32002 + k, [/IMG] excluded) per prompt.

    prompt_ids: per prompt, its ids without BOS (released: add_special_tokens=False); [IMG] is appended here.
    Multi-modal prompts are ids too: an image in a prompt is its visual ids, without delimiters (released
    `multimodal_synthesis`; see `LavitRunner.multimodal_prompt_ids`).
    generator: one for the batch, or one per prompt (then a prompt's tokens depend on its own generator only, not
    on which other prompts share the batch).
    """
    sampling = sampling or ImageSampling()
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
    num_beams: int,
    min_new_tokens: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    eos_token_id: int | None = None,
    decoding: str = "modern",
) -> list[list[int]]:
    """Beam search after [IMG] image [/IMG] prompt; non-text ids are suppressed. Returns new token ids per sample.

    decoding: "modern" = transformers' `generate` (the pinned version's beam scoring); "released" = our beam search
    with transformers 4.33's scoring, which the released numbers were made with (`beam_search.py`)."""
    from model.lavit.beam_search import DECODINGS, BeamSettings, beam_search, causal_lm_step

    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; expected one of {DECODINGS}")
    items = [model.understanding_item(e, p) for e, p in zip(image_embeds, prompt_ids)]
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


# ------------------------------------------------------------------------------------------------------------
# The evaluation adapter

# Keep-mask selection at inference: public names -> `token_selector` modes (both spellings accepted).
SELECTION_MODES = {
    "argmax": "deterministic",
    "gumbel": "sampled",
    "deterministic": "deterministic",
    "sampled": "sampled",
}
SELECTION_NAMES = {"deterministic": "argmax", "sampled": "gumbel"}


def selection_mode(name: str) -> str:
    if name not in SELECTION_MODES:
        raise ValueError(f"unknown keep-mask selection {name!r}; expected 'argmax' or 'gumbel'")
    return SELECTION_MODES[name]


class LavitRunner:
    """LaVIT behind `eval/interface.py`'s four request methods. Holds the model, the text tokenizer and defaults."""

    def __init__(
        self,
        model: LavitForCausalLM,
        text_tokenizer: Any,
        model_id: str,
        seed: int = 0,
        understanding_selection: str | None = None,
    ):
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.model_id = model_id
        self.seed = seed
        self.defaults = model.lavit_config.generation
        # Keep mask at inference: the released code draws it with hard Gumbel noise ("gumbel", seeded here);
        # "argmax" makes predictions independent of the seed. A request's generation["selection"] overrides it.
        self.understanding_selection = selection_mode(understanding_selection or self.defaults.understanding_selection)

    @classmethod
    def from_official(cls, directory: str, config=None, model_id: str | None = None, **kwargs: Any) -> "LavitRunner":
        """Runner over a released checkpoint directory (`official.load_official_lavit`, strict)."""
        from pathlib import Path

        from model.lavit.official import load_official_lavit

        loaded = load_official_lavit(directory, config)
        return cls(loaded.model, loaded.text_tokenizer, model_id or f"lavit:{Path(directory).resolve()}", **kwargs)

    def _ids(self, texts: list[str], add_bos: bool = False) -> list[torch.Tensor]:
        ids = [self.text_tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
        bos = [self.model.lavit_config.llm.bos_token_id] if add_bos else []
        return [torch.tensor(bos + list(i), dtype=torch.long) for i in ids]

    @torch.no_grad()
    def _image_embeds(self, images: list["Image.Image"], generation: dict | None = None) -> list[torch.Tensor]:
        generation = generation or {}
        selection = selection_mode(generation.get("selection", self.understanding_selection))
        pixel_values = self.model.visual_tokenizer.preprocess(images)
        generator = torch.Generator(device=pixel_values.device).manual_seed(int(generation.get("seed", self.seed)))
        encoded = self.model.encode_images(pixel_values, selection=selection, generator=generator, need_codes=False)
        return encoded.llm_embeds

    def text_settings(self, kind: str, **generation: Any) -> dict[str, Any]:
        """What a caption/answer request with these `generation` settings runs, for the result record: decoding
        mode, keep-mask selection (+ seed when it matters), and for "vqa" the question processing, the
        answerability step and whether answers are lemmatised (which depends on spaCy being installed)."""
        if kind not in ("caption", "vqa"):
            raise ValueError(f"kind must be 'caption' or 'vqa', got {kind!r}")
        selection = SELECTION_NAMES[selection_mode(generation.get("selection", self.understanding_selection))]
        record: dict[str, Any] = {
            "decoding": generation.get("decoding", self.defaults.text_decoding),
            "selection": selection,
        }
        if selection == "gumbel":
            record["selection_seed"] = int(generation.get("seed", self.seed))
        if kind == "vqa":
            templated = generation.get("question_template") is not None
            record["question_processing"] = generation.get("question_processing", "released") if templated else "none"
            record["answerability_step"] = generation.get("answerability_prompt") is not None
            lemmatise = generation.get("lemmatize", self.defaults.vqa_lemmatize)
            record["lemmatisation"] = released_processing.load_lemmatiser(bool(lemmatise)).status
        return record

    def _decode(self, rows: list[list[int]]) -> list[str]:
        return self.text_tokenizer.batch_decode(rows, skip_special_tokens=True)

    @torch.no_grad()
    def caption(self, images: list["Image.Image"], prompt: str = "", **generation: Any) -> list[str]:
        """Keys of `generation`: num_beams, min_new_tokens, max_new_tokens, length_penalty, early_stopping,
        decoding ("released" | "modern"), selection ("gumbel" | "argmax"), seed."""
        d = self.defaults
        prompt = prompt or d.caption_prompt
        rows = generate_text(
            self.model,
            self._image_embeds(images, generation),
            self._ids([prompt] * len(images)),
            num_beams=generation.get("num_beams", d.caption_num_beams),
            min_new_tokens=generation.get("min_new_tokens", d.caption_min_new_tokens),
            max_new_tokens=generation.get("max_new_tokens", d.caption_max_new_tokens),
            length_penalty=generation.get("length_penalty", d.caption_length_penalty),
            early_stopping=generation.get("early_stopping", False),  # released captioner: transformers' default
            decoding=generation.get("decoding", d.text_decoding),
        )
        return [cut_caption(t) for t in self._decode(rows)]

    @torch.no_grad()
    def answer(self, images: list["Image.Image"], questions: list[str], **generation: Any) -> list[str]:
        """Without generation["question_template"], `questions` already carry the task's template (e.g.
        "Question: {} Answer:") and are used as given. With it, they are raw questions: normalised as released
        (generation["question_processing"]: "released" (default) | "none"), then put into the template.
        generation["answerability_prompt"] (VizWiz, needs the template; the released one is
        `released_processing.ANSWERABILITY_PROMPT`) asks first whether each question is answerable and answers
        "unanswerable" when the judgement says no. generation["lemmatize"] (default `vqa_lemmatize`) lemmatises
        answers with spaCy when it is installed (`text_settings` records whether it was). Other keys: num_beams,
        min_new_tokens, max_new_tokens, length_penalty, early_stopping, decoding, selection, seed."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        template = generation.get("question_template")
        answerability = generation.get("answerability_prompt")
        if template is None:
            if answerability is not None:
                raise ValueError("answerability_prompt needs question_template (the raw questions go into it)")
            return self._answer_prompts(images, list(questions), generation)
        processing = generation.get("question_processing", "released")
        if processing not in ("released", "none"):
            raise ValueError(f"question_processing must be 'released' or 'none', got {processing!r}")
        if processing == "released":
            questions = [released_processing.normalize_question(q) for q in questions]
        answers = self._answer_prompts(images, [template.format(q) for q in questions], generation)
        if answerability is not None:
            judge_prompts = [template.format(answerability.format(q)) for q in questions]
            judged = self._answer_prompts(images, judge_prompts, generation)
            answers = released_processing.apply_answerability(answers, judged)
        return answers

    def _answer_prompts(self, images: list["Image.Image"], prompts: list[str], generation: dict) -> list[str]:
        d = self.defaults
        rows = generate_text(
            self.model,
            self._image_embeds(images, generation),
            self._ids(prompts),
            num_beams=generation.get("num_beams", d.vqa_num_beams),
            min_new_tokens=generation.get("min_new_tokens", d.vqa_min_new_tokens),
            max_new_tokens=generation.get("max_new_tokens", d.vqa_max_new_tokens),
            length_penalty=generation.get("length_penalty", d.vqa_length_penalty),
            early_stopping=generation.get("early_stopping", True),  # released VQA decoding
            decoding=generation.get("decoding", d.text_decoding),
        )
        lemmatise = released_processing.load_lemmatiser(bool(generation.get("lemmatize", d.vqa_lemmatize)), warn=True)
        return lemmatise([clean_vqa_answer(t) for t in self._decode(rows)])

    @torch.no_grad()
    def _generators(self, n: int, seeds: list[int] | None, generation: dict) -> list[torch.Generator]:
        """One generator per sample: from `seeds` (the eval runner's per-sample seeds, so an image does not depend
        on its batch), else from generation["seed"] (or the runner's seed) + the sample's index."""
        device = self.model.llm_device
        if seeds is None:
            base = int(generation.get("seed", self.seed))
            seeds = [base + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def generate_visual_ids(
        self, prompts: list, seeds: list[int] | None = None, **generation: Any
    ) -> list[torch.Tensor]:
        """Prompts are strings, or lists of strings and PIL images (multi-modal prompts)."""
        d = self.defaults
        sampling = ImageSampling(
            top_k=generation.get("top_k", d.image_top_k),
            temperature=generation.get("temperature", d.image_temperature),
            cfg_scale=generation.get("cfg_scale", d.image_cfg_scale),
            min_new_tokens=generation.get("min_new_tokens", d.image_min_new_tokens),
            max_new_tokens=generation.get("max_new_tokens", d.image_max_new_tokens),
        )
        prompt_ids = [self._ids([p])[0] if isinstance(p, str) else self.multimodal_prompt_ids(p) for p in prompts]
        generators = self._generators(len(prompts), seeds, generation)
        return sample_image_tokens(self.model, prompt_ids, sampling, generator=generators)

    @torch.no_grad()
    def multimodal_prompt_ids(self, parts: list) -> torch.Tensor:
        """A multi-modal prompt (App. A, Fig. 4): a list of strings and PIL images -> one id sequence. Text is
        tokenized without BOS; an image becomes its visual ids 32002 + code (stage-1 tokenizer, no [IMG]/[/IMG]),
        as in the released `multimodal_synthesis`."""
        from PIL import Image as PILImage

        pieces = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(self._ids([part])[0])
            elif isinstance(part, PILImage.Image):
                tok = self.model.visual_tokenizer
                out = tok.tokenize(
                    tok.preprocess([part]),
                    selection=self.understanding_selection,
                    generator=torch.Generator(device=tok.device).manual_seed(self.seed),
                )
                pieces.append(self.model.vocab.code_to_id(out.codes[0]).cpu())
            else:
                raise TypeError(f"prompt parts must be str or PIL images, got {type(part).__name__}")
        return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def generate_images(
        self, prompts: list[str], seeds: list[int] | None = None, **generation: Any
    ) -> list["Image.Image"]:
        """One image per prompt. `seeds` (one per prompt, as `eval.runner` passes them) make each image a function
        of its prompt and seed only. Keys of `generation`: top_k, temperature, cfg_scale, min_new_tokens,
        max_new_tokens (visual tokens), num_inference_steps, decoder_guidance_scale (pixel decoder), seed."""
        from model.lavit.pixel_decoder import to_pil

        visual_ids = self.generate_visual_ids(prompts, seeds, **generation)
        images = self.model.decode_visual_ids(
            visual_ids,
            num_inference_steps=generation.get("num_inference_steps"),
            guidance_scale=generation.get("decoder_guidance_scale"),
            generator=self._generators(len(prompts), seeds, generation),  # fresh: the noise seeds the U-Net start
        )
        return to_pil(images)

    @torch.no_grad()
    def score_text(
        self, contexts: list[str], continuations: list[str], images: list["Image.Image | None"] | None = None
    ) -> list[float]:
        """Sum of log p(continuation tokens | [image], context). Text-only rows start with <s> (LLaMA, MMLU);
        image rows are [IMG] feats [/IMG] context continuation (no BOS), like the understanding input."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        images = images or [None] * len(contexts)
        items, n_cont = [], []
        for context, continuation, image in zip(contexts, continuations, images):
            ctx = self._ids([context])[0]
            whole = self._ids([context + continuation])[0]
            if whole[: len(ctx)].tolist() == ctx.tolist() and len(whole) > len(ctx):
                cont = whole[len(ctx) :]
            else:  # the tokenizer merged across the boundary: tokenize the continuation alone
                cont = self._ids([continuation])[0]
            ids = torch.cat([ctx, cont])
            labels = torch.cat([torch.full_like(ctx, IGNORE_INDEX), cont])
            if image is None:
                bos = torch.tensor([self.model.lavit_config.llm.bos_token_id])
                item = self.model.text_item(torch.cat([bos, ids]), supervise=False)
                item.labels = torch.cat([torch.tensor([IGNORE_INDEX]), labels]).to(item.embeds.device)
            else:
                embeds = self._image_embeds([image])[0]
                item = self.model.understanding_item(embeds, ids, supervise_text=False)
                item.labels[-len(cont) :] = cont.to(item.labels.device)
            items.append(item)
            n_cont.append(len(cont))
        batch = self.model.collate(items)
        logits = (
            self.model(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            )
            .logits[:, :-1]
            .float()
        )  # (b, l-1, v)
        labels = batch.labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (b, l-1)
        return (logp * (labels != IGNORE_INDEX)).sum(-1).tolist()
