"""`VilaEvalAdapter`: VILA behind `eval/interface.py`'s request methods (caption / answer / score_text) plus the
interleaved request `generate_interleaved`, built by `model.vila.checkpoints.load_for_eval`.

Prompts:

    caption, answer        one chat turn of the adapter's conversation template (default: the model config's
                           `conversation`; a task may pass `conv_template=NAME`): user "<image>\\n{prompt or question}",
                           the assistant's reply open (the released evaluation's single-image prompt)
    generate_interleaved   the segments concatenated as given, each image as its "<image>" placeholder (no separator
                           is added: a task puts its own newlines), with no template unless `conv_template=NAME` is
                           passed (then the whole sequence is the user turn). This is the few-shot path (Table 1's
                           4-shot prompts are interleaved image-text sequences)
    score_text             "<s>" + ["<image>\\n"] + context, then the continuation's tokens scored (no template)

Decoding settings (the task's `generation` dict): `max_new_tokens` (required); optional `min_new_tokens`,
`num_beams` (1 only), `do_sample`, `temperature`, `top_p`, `seed` (sampling), `conv_template`; `length_penalty` and
`early_stopping` (beam-search settings of the tasks' shared greedy defaults) are accepted at one beam, where they change
nothing. Any other setting is an error naming it: nothing is silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from model.vila.configuration import IGNORE_INDEX
from model.vila.conversation import IMAGE_PLACEHOLDER, get_template, tokenize_with_images
from model.vila.modeling_vila import VilaForCausalLM

if TYPE_CHECKING:
    from PIL import Image

REQUIRED = ("max_new_tokens",)
OPTIONAL = ("min_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "seed", "conv_template")
# Beam-search settings a task's default decoding carries (eval/tasks.py's greedy defaults are shared by families):
# they change nothing with one beam, the only width this adapter decodes with, so they are accepted only at num_beams=1.
BEAM_ONLY = ("length_penalty", "early_stopping")


def decoding_settings(method: str, generation: dict[str, Any]) -> dict[str, Any]:
    if int(generation.get("num_beams", 1)) != 1:
        raise ValueError(f"VilaEvalAdapter.{method}: num_beams={generation['num_beams']}; only greedy / sampling (1 beam) is implemented")
    generation = {k: v for k, v in generation.items() if k not in BEAM_ONLY}
    missing = [k for k in REQUIRED if k not in generation]
    unknown = sorted(k for k in generation if k not in REQUIRED and k not in OPTIONAL)
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise ValueError(
            f"VilaEvalAdapter.{method}: generation settings {', '.join(parts)}; it reads {list(REQUIRED)} "
            f"(+ optional {list(OPTIONAL)}), got {sorted(generation)}"
        )
    return dict(generation)


class VilaEvalAdapter:
    def __init__(
        self,
        model: VilaForCausalLM,
        tokenizer: Any,
        *,
        model_id: str,
        device: str | torch.device | None = None,
        conversation: str | None = None,
        batch_size: int = 8,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = torch.device(device) if device is not None else model.llm_device
        self.conversation = conversation or model.vila_config.conversation
        get_template(self.conversation)  # an unknown name fails here, not at the first request
        self.batch_size = batch_size

    # ---------------------------------------------------------------------------------------------------------
    # Helpers

    def _ids(self, text: str) -> list[int]:
        return tokenize_with_images(text, self.tokenizer, self.model.image_token_index)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor | None:
        if not images:
            return None
        return self.model.vision_tower.preprocess(images).to(self.device)

    def _chat(self, user: str, conversation: str) -> str:
        return get_template(conversation).prompt([(user, None)])

    def _generate(self, texts: list[str], images: list[list[Image.Image]], settings: dict[str, Any]) -> list[str]:
        """One continuation per text (whose `<image>` placeholders take `images[i]` in order), batched."""
        pad = self.model.vila_config.llm.pad_token_id
        eos = self.model.vila_config.llm.eos_token_id
        seed = settings.get("seed")
        generator = torch.Generator(device=self.device).manual_seed(int(seed)) if seed is not None else None
        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            rows = [self._ids(t) for t in texts[start : start + self.batch_size]]
            row_images = images[start : start + self.batch_size]
            for ids, imgs in zip(rows, row_images):
                n = ids.count(self.model.image_token_index)
                if n != len(imgs):
                    raise ValueError(f"a prompt has {n} {IMAGE_PLACEHOLDER} placeholders but {len(imgs)} images")
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for b, ids in enumerate(rows):  # left padding: every row's prompt ends at the last column
                input_ids[b, width - len(ids) :] = torch.tensor(ids)
                mask[b, width - len(ids) :] = 1
            tokens = self.model.generate(
                input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                images=self._pixels([img for imgs in row_images for img in imgs]),
                max_new_tokens=int(settings["max_new_tokens"]),
                min_new_tokens=int(settings.get("min_new_tokens", 0)),
                num_beams=int(settings.get("num_beams", 1)),
                do_sample=bool(settings.get("do_sample", False)),
                temperature=float(settings.get("temperature", 1.0)),
                top_p=float(settings.get("top_p", 1.0)),
                generator=generator,
            )
            for row in tokens.tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                outputs.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return outputs

    # ---------------------------------------------------------------------------------------------------------
    # eval/interface.py's requests

    def caption(self, images: list[Image.Image], prompt: str, **generation: Any) -> list[str]:
        settings = decoding_settings("caption", generation)
        conversation = settings.get("conv_template", self.conversation)
        user = f"{IMAGE_PLACEHOLDER}\n{prompt}" if prompt else IMAGE_PLACEHOLDER
        return self._generate([self._chat(user, conversation)] * len(images), [[im] for im in images], settings)

    def answer(self, images: list[Image.Image], questions: list[str], **generation: Any) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"answer: {len(images)} images but {len(questions)} questions")
        settings = decoding_settings("answer", generation)
        conversation = settings.get("conv_template", self.conversation)
        texts = [self._chat(f"{IMAGE_PLACEHOLDER}\n{q}", conversation) for q in questions]
        return self._generate(texts, [[im] for im in images], settings)

    def generate_interleaved(self, sequences: list[list[str | Image.Image]], **generation: Any) -> list[str]:
        """One continuation per sequence of text segments and images (in order)."""
        settings = decoding_settings("generate_interleaved", generation)
        texts, images = [], []
        for seq in sequences:
            parts, imgs = [], []
            for segment in seq:
                if isinstance(segment, str):
                    if IMAGE_PLACEHOLDER in segment:
                        raise ValueError(f"a text segment contains {IMAGE_PLACEHOLDER!r}; pass images as PIL images")
                    parts.append(segment)
                else:
                    parts.append(IMAGE_PLACEHOLDER)
                    imgs.append(segment)
            text = "".join(parts)
            if "conv_template" in settings:
                text = self._chat(text, settings["conv_template"])
            texts.append(text)
            images.append(imgs)
        return self._generate(texts, images, settings)

    @torch.no_grad()
    def score_text(
        self, contexts: list[str], continuations: list[str], images: list[Image.Image | None] | None = None
    ) -> list[float]:
        if len(contexts) != len(continuations) or (images is not None and len(images) != len(contexts)):
            raise ValueError("score_text: contexts, continuations (and images) must have the same length")
        images = images if images is not None else [None] * len(contexts)
        pad = self.model.vila_config.llm.pad_token_id
        scores: list[float] = []
        for start in range(0, len(contexts), self.batch_size):
            rows, label_rows, imgs = [], [], []
            for ctx, cont, img in zip(*(x[start : start + self.batch_size] for x in (contexts, continuations, images))):
                if IMAGE_PLACEHOLDER in ctx:
                    raise ValueError(f"score_text: a context contains {IMAGE_PLACEHOLDER!r}; pass the image instead")
                ids = self._ids((f"{IMAGE_PLACEHOLDER}\n" if img is not None else "") + ctx)
                cont_ids = self.tokenizer(cont, add_special_tokens=False)["input_ids"]
                rows.append(ids + cont_ids)
                label_rows.append([IGNORE_INDEX] * len(ids) + cont_ids)
                if img is not None:
                    imgs.append(img)
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for b, (ids, lab) in enumerate(zip(rows, label_rows)):
                input_ids[b, : len(ids)] = torch.tensor(ids)
                labels[b, : len(ids)] = torch.tensor(lab)
                mask[b, : len(ids)] = 1
            logp = self.model.sequence_logprobs(
                input_ids.to(self.device), labels.to(self.device), mask.to(self.device), self._pixels(imgs)
            )
            scores.extend(float(x) for x in logp.tolist())
        return scores
