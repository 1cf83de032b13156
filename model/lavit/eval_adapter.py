"""`LavitEvalAdapter`: LaVIT behind `eval/interface.py`'s four request methods (caption / answer / generate_images /
score_text), built by `model.lavit.checkpoints.load_for_eval` for `python -m eval`.

Every decoding setting comes from the `**generation` keyword arguments the eval runner passes (the evaluation
task's `generation` dict, `eval/tasks.py`): this adapter has no decoding defaults, a missing setting is an error
naming it, and so is an unknown one (nothing is silently ignored). The settings each method reads:

    caption, answer     num_beams, min_new_tokens, max_new_tokens, length_penalty, early_stopping   [seed]
    generate_images     top_k, temperature, cfg_scale, min_new_tokens, max_new_tokens (visual tokens),
                        num_inference_steps, decoder_guidance_scale (pixel decoder)                  [seed]

`seed` (optional) seeds the Gumbel noise of a sampled keep mask (captions, answers) or, when the runner passes no
per-sample seeds, the image samples; without it the adapter's own `seed` is used.

The keep mask of the understanding path is argmax ("deterministic") by default; the released code draws it with
Gumbel noise even at inference, which `understanding_selection="sampled"` reproduces (seeded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from model.lavit.generation import (
    ImageSampling,
    clean_vqa_answer,
    cut_caption,
    generate_text,
    sample_image_tokens,
)
from model.lavit.modeling_lavit import IGNORE_INDEX, LavitForCausalLM

if TYPE_CHECKING:
    from PIL import Image

# The generation keys each request method reads (all required), and the optional ones.
TEXT_SETTINGS = ("num_beams", "min_new_tokens", "max_new_tokens", "length_penalty", "early_stopping")
VISUAL_ID_SETTINGS = ("top_k", "temperature", "cfg_scale", "min_new_tokens", "max_new_tokens")
PIXEL_SETTINGS = ("num_inference_steps", "decoder_guidance_scale")
OPTIONAL_SETTINGS = ("seed",)


def decoding_settings(method: str, generation: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    """`generation` checked against the settings `method` reads: every required key present, no unknown key."""
    missing = [k for k in required if k not in generation]
    unknown = sorted(k for k in generation if k not in required and k not in OPTIONAL_SETTINGS)
    if missing or unknown:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unknown {unknown}"] if unknown else []
        raise ValueError(
            f"LavitEvalAdapter.{method}: generation settings {', '.join(parts)}; it reads {list(required)} "
            f"(+ optional {list(OPTIONAL_SETTINGS)}), which the evaluation task must give (got {sorted(generation)})"
        )
    return generation


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
        # The released code samples the keep mask with Gumbel noise even at inference; "sampled" reproduces that,
        # "deterministic" (argmax) makes predictions independent of the seed.
        self.understanding_selection = understanding_selection

    def _ids(self, texts: list[str], add_bos: bool = False) -> list[torch.Tensor]:
        ids = [self.text_tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
        bos = [self.model.lavit_config.llm.bos_token_id] if add_bos else []
        return [torch.tensor(bos + list(i), dtype=torch.long) for i in ids]

    def _image_embeds(self, images: list["Image.Image"], seed: int) -> list[torch.Tensor]:
        pixel_values = self.model.visual_tokenizer.preprocess(images)
        generator = torch.Generator(device=pixel_values.device).manual_seed(seed)
        return self.model.encode_images(
            pixel_values, selection=self.understanding_selection, generator=generator, need_codes=False
        ).llm_embeds

    def _decode(self, rows: list[list[int]]) -> list[str]:
        return self.text_tokenizer.batch_decode(rows, skip_special_tokens=True)

    def _generate_text(self, images, prompts: list[str], settings: dict[str, Any]) -> list[str]:
        rows = generate_text(
            self.model,
            self._image_embeds(images, int(settings.get("seed", self.seed))),
            self._ids(prompts),
            num_beams=int(settings["num_beams"]),
            min_new_tokens=int(settings["min_new_tokens"]),
            max_new_tokens=int(settings["max_new_tokens"]),
            length_penalty=float(settings["length_penalty"]),
            early_stopping=bool(settings["early_stopping"]),
        )
        return self._decode(rows)

    @torch.no_grad()
    def caption(self, images: list["Image.Image"], prompt: str, **generation: Any) -> list[str]:
        """One caption per image: [IMG] image [/IMG] prompt -> beam search -> the text before the first '.'."""
        settings = decoding_settings("caption", generation, TEXT_SETTINGS)
        return [cut_caption(t) for t in self._generate_text(images, [prompt] * len(images), settings)]

    @torch.no_grad()
    def answer(self, images: list["Image.Image"], questions: list[str], **generation: Any) -> list[str]:
        """`questions` already carry the task's template (e.g. "Question: {} Answer:")."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        settings = decoding_settings("answer", generation, TEXT_SETTINGS)
        return [clean_vqa_answer(t) for t in self._generate_text(images, questions, settings)]

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
