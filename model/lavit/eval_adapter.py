"""`LavitEvalAdapter`: LaVIT behind `eval/interface.py`'s request methods (caption / answer / generate_images /
score_text / generate_interleaved), built by `model.lavit.checkpoints.load_for_eval` for `python -m eval`.

Every decoding setting comes from the `**generation` keyword arguments the eval runner passes (the evaluation
task's `generation` dict, `eval/tasks.py`): this adapter has no decoding defaults, a missing setting is an error
naming it, and so is an unknown one (nothing is silently ignored). The settings each method reads:

    caption, answer,    num_beams, min_new_tokens, max_new_tokens, length_penalty, early_stopping,
    generate_interleaved decoding ("released": transformers 4.33's beam scoring, as the paper's numbers | "modern":
                        the pinned transformers' `generate`), selection (keep mask: "gumbel", hard Gumbel noise as
                        the release draws it even at inference, seeded | "argmax")                    [seed]
    answer, also        lemmatize (bool: the released spaCy lemmatisation of answers; applied when spaCy and
                        en_core_web_sm are installed, and `text_settings` records whether it was)
                        [question_template, question_processing, answerability_prompt]
    generate_images     top_k, temperature, cfg_scale, min_new_tokens, max_new_tokens (visual tokens),
                        num_inference_steps, decoder_guidance_scale (pixel decoder)                  [seed]

`seed` (optional) seeds the Gumbel noise of a "gumbel" keep mask (captions, answers) or, when the runner passes no
per-sample seeds, the image samples; without it the adapter's own `seed` is used.

Questions: without `question_template` they already carry the task's prompt (eval/interface.py's contract) and are
used as given. With it (e.g. "Question: {} Answer:"; the task's prompt is then "{text}") they are the raw dataset
questions: normalised as released when `question_processing` is "released" ("none": as written; required with a
template), then put into the template. `answerability_prompt` (VizWiz; needs the template) first asks, per question,
the released 'Is the question: "{}" answerable?' and answers "unanswerable" when the judgement says no
(`released_processing.py`).

`text_settings(kind, **generation)` is what a caption ("caption") or VQA ("vqa") request with these settings runs,
for the result record: the eval runner stores it in the prediction caches and results (`eval.runner`).

The keep mask of `score_text` and of images in multi-modal prompts (paths without task settings) is the adapter's
`understanding_selection`: argmax ("deterministic", the default) or seeded Gumbel noise ("sampled").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from model.lavit import released_processing
from model.lavit.generation import (
    ImageSampling,
    clean_vqa_answer,
    cut_caption,
    generate_text,
    generate_text_from_items,
    sample_image_tokens,
)
from model.lavit.modeling_lavit import IGNORE_INDEX, LavitForCausalLM

if TYPE_CHECKING:
    from PIL import Image

# The generation keys each request method reads (all required), and the optional ones.
TEXT_SETTINGS = (
    "num_beams", "min_new_tokens", "max_new_tokens", "length_penalty", "early_stopping", "decoding", "selection",
)  # fmt: skip
ANSWER_SETTINGS = TEXT_SETTINGS + ("lemmatize",)
VISUAL_ID_SETTINGS = ("top_k", "temperature", "cfg_scale", "min_new_tokens", "max_new_tokens")
PIXEL_SETTINGS = ("num_inference_steps", "decoder_guidance_scale")
OPTIONAL_SETTINGS = ("seed",)
OPTIONAL_ANSWER_SETTINGS = OPTIONAL_SETTINGS + ("question_template", "question_processing", "answerability_prompt")
# Keep-mask selection of the understanding path: task setting -> `token_selector` mode.
SELECTIONS = {"argmax": "deterministic", "gumbel": "sampled"}
QUESTION_PROCESSING = ("released", "none")


def decoding_settings(
    method: str, generation: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = OPTIONAL_SETTINGS
) -> dict[str, Any]:
    """`generation` checked against the settings `method` reads: every required key present, no unknown key."""
    missing = [k for k in required if k not in generation]
    unknown = sorted(k for k in generation if k not in required and k not in optional)
    if missing or unknown:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unknown {unknown}"] if unknown else []
        raise ValueError(
            f"LavitEvalAdapter.{method}: generation settings {', '.join(parts)}; it reads {list(required)} "
            f"(+ optional {list(optional)}), which the evaluation task must give (got {sorted(generation)})"
        )
    if "selection" in required and generation["selection"] not in SELECTIONS:
        raise ValueError(
            f"LavitEvalAdapter.{method}: selection={generation['selection']!r}; expected one of {list(SELECTIONS)}"
        )
    return generation


def question_settings(settings: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """(template, question processing, answerability prompt) of an answer request, checked for consistency."""
    template = settings.get("question_template")
    processing = settings.get("question_processing")
    answerability = settings.get("answerability_prompt")
    if template is None:
        if processing not in (None, "none") or answerability is not None:
            raise ValueError(
                "LavitEvalAdapter.answer: question_processing / answerability_prompt need question_template "
                "(the raw questions go into it); without a template the questions are used as given"
            )
        return None, "none", None
    if processing not in QUESTION_PROCESSING:
        raise ValueError(
            f"LavitEvalAdapter.answer: question_processing={processing!r} (required with question_template); "
            f"expected one of {list(QUESTION_PROCESSING)}"
        )
    return str(template), processing, answerability


def image_seed(seed: int, image: "Image.Image") -> int:
    """A seed from the task seed and the image's content (mode, size and pixels)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}/{image.mode}/{image.size}".encode() + image.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class LavitEvalAdapter:
    """LaVIT behind `eval/interface.py`'s request methods. Holds the model, its text tokenizer and its id."""

    def __init__(
        self,
        model: LavitForCausalLM,
        text_tokenizer: Any,
        model_id: str,
        seed: int = 0,
        understanding_selection: str = "deterministic",
    ):
        if understanding_selection not in ("deterministic", "sampled"):
            raise ValueError(
                f"understanding_selection={understanding_selection!r}; expected 'deterministic' or 'sampled'"
            )
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.model_id = model_id
        self.seed = seed
        # Keep mask where no task settings reach (score_text, images in multi-modal prompts); captions and answers
        # take the task's generation["selection"]. "sampled" = seeded Gumbel noise, as the release; "deterministic"
        # (argmax) makes the result independent of the seed.
        self.understanding_selection = understanding_selection

    def _ids(self, texts: list[str], add_bos: bool = False) -> list[torch.Tensor]:
        ids = [self.text_tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
        bos = [self.model.lavit_config.llm.bos_token_id] if add_bos else []
        return [torch.tensor(bos + list(i), dtype=torch.long) for i in ids]

    def _image_embeds(self, images: list["Image.Image"], seed: int, selection: str | None = None) -> list[torch.Tensor]:
        """LLM inputs of the images; `selection` a token_selector mode (default: the adapter's)."""
        pixel_values = self.model.visual_tokenizer.preprocess(images)
        # One Gumbel noise stream per image, seeded by (seed, the image's pixels): an image's keep mask does not
        # depend on which batch it lands in, so a resumed or re-batched evaluation draws the same masks.
        generators = [torch.Generator(device=pixel_values.device).manual_seed(image_seed(seed, image)) for image in images]
        return self.model.encode_images(
            pixel_values, selection=selection or self.understanding_selection, generator=generators, need_codes=False
        ).llm_embeds

    def _decode(self, rows: list[list[int]]) -> list[str]:
        return self.text_tokenizer.batch_decode(rows, skip_special_tokens=True)

    def _generate_text(self, images, prompts: list[str], settings: dict[str, Any]) -> list[str]:
        rows = generate_text(
            self.model,
            self._image_embeds(images, int(settings.get("seed", self.seed)), SELECTIONS[settings["selection"]]),
            self._ids(prompts),
            num_beams=int(settings["num_beams"]),
            min_new_tokens=int(settings["min_new_tokens"]),
            max_new_tokens=int(settings["max_new_tokens"]),
            length_penalty=float(settings["length_penalty"]),
            early_stopping=bool(settings["early_stopping"]),
            decoding=str(settings["decoding"]),
        )
        return self._decode(rows)

    @torch.no_grad()
    def generate_interleaved(self, sequences: list[list], **generation: Any) -> list[str]:
        """One raw text continuation per interleaved sequence of strings and PIL images (in-context demonstrations,
        `eval.interface.InterleavedGenerator`). Each image enters as in understanding, [IMG] features [/IMG], each
        string as its ids (no BOS); several images per sequence are fine. Decoding reads the caption / answer keys
        (TEXT_SETTINGS: num_beams, ..., decoding, selection [seed]); the keep mask of every image is drawn per image
        from (seed, its pixels), as for captions. No caption/answer cut is applied: the evaluation cuts the
        continuation at its template's separator."""
        from PIL import Image as PILImage

        settings = decoding_settings("generate_interleaved", generation, TEXT_SETTINGS)
        images = [part for parts in sequences for part in parts if isinstance(part, PILImage.Image)]
        bad = [type(p).__name__ for parts in sequences for p in parts if not isinstance(p, (str, PILImage.Image))]
        if bad:
            raise TypeError(f"interleaved sequences hold strings and PIL images, got {bad[0]}")
        embeds = iter(
            self._image_embeds(images, int(settings.get("seed", self.seed)), SELECTIONS[settings["selection"]])
            if images else []
        )
        items = []
        for parts in sequences:
            parts = [p for p in parts if not isinstance(p, str) or p]  # an empty text segment adds nothing
            pieces = [self._ids([p])[0] if isinstance(p, str) else next(embeds) for p in parts]
            items.append(self.model.interleaved_item(pieces))
        rows = generate_text_from_items(
            self.model,
            items,
            num_beams=int(settings["num_beams"]),
            min_new_tokens=int(settings["min_new_tokens"]),
            max_new_tokens=int(settings["max_new_tokens"]),
            length_penalty=float(settings["length_penalty"]),
            early_stopping=bool(settings["early_stopping"]),
            decoding=str(settings["decoding"]),
        )
        return self._decode(rows)

    def text_settings(self, kind: str, **generation: Any) -> dict[str, Any]:
        """What a caption ("caption") or answer ("vqa") request with these `generation` settings runs, for the
        result record: decoding, keep-mask selection (+ its seed when it matters) and, for "vqa", the question
        processing, whether the answerability step runs and whether answers are lemmatised ("lemmatised" /
        "not lemmatised": it depends on spaCy being installed). The settings are checked as the request would."""
        if kind == "caption":
            settings = decoding_settings("caption", generation, TEXT_SETTINGS)
        elif kind == "vqa":
            settings = decoding_settings("answer", generation, ANSWER_SETTINGS, OPTIONAL_ANSWER_SETTINGS)
        else:
            raise ValueError(f"kind must be 'caption' or 'vqa', got {kind!r}")
        record: dict[str, Any] = {"decoding": settings["decoding"], "selection": settings["selection"]}
        if settings["selection"] == "gumbel":
            record["selection_seed"] = int(settings.get("seed", self.seed))
        if kind == "vqa":
            template, processing, answerability = question_settings(settings)
            record["question_processing"] = processing
            record["question_template"] = template
            record["answerability_step"] = answerability is not None
            record["lemmatisation"] = released_processing.load_lemmatiser(bool(settings["lemmatize"])).status
        return record

    @torch.no_grad()
    def caption(self, images: list["Image.Image"], prompt: str, **generation: Any) -> list[str]:
        """One caption per image: [IMG] image [/IMG] prompt -> beam search -> the text before the first '.'."""
        settings = decoding_settings("caption", generation, TEXT_SETTINGS)
        return [cut_caption(t) for t in self._generate_text(images, [prompt] * len(images), settings)]

    @torch.no_grad()
    def answer(self, images: list["Image.Image"], questions: list[str], **generation: Any) -> list[str]:
        """One answer per (image, question): beam search, the released answer cuts, lemmatisation if asked for.
        Questions carry the task's template, or are raw with generation["question_template"] (module docstring)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        settings = decoding_settings("answer", generation, ANSWER_SETTINGS, OPTIONAL_ANSWER_SETTINGS)
        template, processing, answerability = question_settings(settings)
        if template is None:
            return self._answer_prompts(images, list(questions), settings)
        if processing == "released":
            questions = [released_processing.normalize_question(q) for q in questions]
        answers = self._answer_prompts(images, [template.format(q) for q in questions], settings)
        if answerability is not None:
            judgements = self._answer_prompts(images, [template.format(answerability.format(q)) for q in questions], settings)
            answers = released_processing.apply_answerability(answers, judgements)
        return answers

    def _answer_prompts(self, images: list["Image.Image"], prompts: list[str], settings: dict[str, Any]) -> list[str]:
        lemmatise = released_processing.load_lemmatiser(bool(settings["lemmatize"]), warn=True)
        return lemmatise([clean_vqa_answer(t) for t in self._generate_text(images, prompts, settings)])

    def _generators(self, n: int, seeds: list[int] | None, generation: dict) -> list[torch.Generator]:
        """One generator per sample: from `seeds` (the eval runner's per-sample seeds, so an image does not depend
        on its batch), else from generation["seed"] (or the adapter's seed) + the sample's index."""
        device = self.model.llm_device
        if seeds is None:
            base = int(generation.get("seed", self.seed))
            seeds = [base + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    @torch.no_grad()
    def generate_visual_ids(
        self, prompts: list, seeds: list[int] | None = None, **generation: Any
    ) -> list[torch.Tensor]:
        """Visual ids of one image per prompt. Prompts are strings, or lists of strings and PIL images."""
        decoding_settings("generate_visual_ids", generation, VISUAL_ID_SETTINGS)
        return self._visual_ids(prompts, seeds, generation)

    def _visual_ids(self, prompts: list, seeds: list[int] | None, generation: dict) -> list[torch.Tensor]:
        sampling = ImageSampling(
            top_k=int(generation["top_k"]),
            temperature=float(generation["temperature"]),
            cfg_scale=float(generation["cfg_scale"]),
            min_new_tokens=int(generation["min_new_tokens"]),
            max_new_tokens=int(generation["max_new_tokens"]),
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
        of its prompt and seed only."""
        from model.lavit.pixel_decoder import to_pil

        decoding_settings("generate_images", generation, VISUAL_ID_SETTINGS + PIXEL_SETTINGS)
        visual_ids = self._visual_ids(prompts, seeds, generation)
        images = self.model.decode_visual_ids(
            visual_ids,
            num_inference_steps=int(generation["num_inference_steps"]),
            guidance_scale=float(generation["decoder_guidance_scale"]),
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
                embeds = self._image_embeds([image], self.seed)[0]
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
