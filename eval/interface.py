"""What a model implements to be evaluated, and what an evaluation is made of.

A model adapter implements the subset of four request methods it supports (the shape of lm-eval's
`LM` class, extended to images):

    caption(images, prompt, **generation)              -> list[str]          one caption per image
    answer(images, questions, **generation)            -> list[str]          one answer per (image, question)
    generate_images(prompts, seeds, **generation)      -> list[PIL.Image]    one image per (prompt, seed)
    score_text(contexts, continuations, images=None)   -> list[float]        sum log p(continuation | image, context)
    generate_interleaved(sequences, **generation)      -> list[str]          one continuation per interleaved sequence

plus a `model_id` string naming the model and its weights (it keeps prediction caches of different models
apart). Every list argument has the same length and the returned list has that length too, in the same order.
Batching inside a call is the model's business; the runner only decides how many samples go in one call.
Images arrive as RGB PIL images; a sample whose image file cannot be decoded is never sent to the model.

Prompts and decoding settings are not the model's business either: they are data in an `EvalTask`, with a
`version` that is bumped whenever they change, so cached predictions and reported numbers say which prompt
produced them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # PIL is only needed by callers that actually pass images.
    from PIL import Image


class EvaluationError(RuntimeError):
    """An evaluation that cannot go on: a task the model cannot run, a model output that breaks the contract
    above, an unknown metric. Bad input data (files, ids, caches) raises `eval.errors.EvalInputError` instead."""


class UnsupportedTaskError(EvaluationError):
    """The model lacks the request method a task needs."""


# ---------------------------------------------------------------------------------------------
# The four request methods, one protocol each, so an adapter can implement any subset.


@runtime_checkable
class Captioner(Protocol):
    model_id: str

    def caption(self, images: list[Image.Image], prompt: str, **generation: Any) -> list[str]:
        """One caption per image. `prompt` is the task's caption instruction (may be "")."""
        ...


@runtime_checkable
class QuestionAnswerer(Protocol):
    model_id: str

    def answer(self, images: list[Image.Image], questions: list[str], **generation: Any) -> list[str]:
        """One free-form answer per (image, question) pair; questions already carry the task's prompt template
        (a task whose template is "{text}" passes the raw questions, for an adapter that templates them itself).

        Optional, for caption and answer adapters: `text_settings(kind, **generation) -> dict` ("caption" / "vqa"),
        what the adapter runs for these settings (e.g. whether answers are lemmatised, which may depend on what
        is installed); `eval.runner` stores it in the cache identity and the results' config."""
        ...


@runtime_checkable
class ImageGenerator(Protocol):
    model_id: str

    def generate_images(self, prompts: list[str], seeds: list[int], **generation: Any) -> list[Image.Image]:
        """One image per prompt; image i must depend only on (prompts[i], seeds[i], generation).

        The runner derives each sample's seed from the task's `generation["seed"]` and the sample id, so an
        image does not depend on which batch it landed in, and a resumed run reproduces an uninterrupted one.
        `generation` carries the guidance scale, number of steps, ... (and the task-level seed).
        """
        ...


@runtime_checkable
class TextScorer(Protocol):
    model_id: str

    def score_text(
        self, contexts: list[str], continuations: list[str], images: list[Image.Image | None] | None = None
    ) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens given its context (and image, if any)."""
        ...


@runtime_checkable
class InterleavedGenerator(Protocol):
    model_id: str

    def generate_interleaved(self, sequences: list[list[str | Image.Image]], **generation: Any) -> list[str]:
        """One text continuation per sequence. A sequence is text segments and images in reading order, any number of
        images (in-context demonstrations first, the query last); the model reads it as one interleaved input and
        continues the text after its last element. The continuation is returned raw: the runner cuts it where the
        next demonstration would begin (`fewshot_parts`), so the model needs no task-specific stop rule."""
        ...


class VisionLanguageModel(Captioner, QuestionAnswerer, ImageGenerator, TextScorer, InterleavedGenerator, Protocol):
    """A model that supports every request; adapters usually implement a subset (see `require_method`)."""


# ---------------------------------------------------------------------------------------------
# Samples and tasks are plain data.

TaskKind = Literal["caption", "vqa", "t2i", "multiple_choice", "interleaved"]

# The model method each kind of task calls, and whether its samples carry an image.
TASK_METHOD: dict[str, str] = {
    "caption": "caption",
    "vqa": "answer",
    "t2i": "generate_images",
    "multiple_choice": "score_text",
    "interleaved": "generate_interleaved",
}
KIND_NEEDS_IMAGE: dict[str, bool] = {"caption": True, "vqa": True, "t2i": False, "multiple_choice": False, "interleaved": True}

SampleId = str | int  # dataset ids as the dataset spells them (COCO image ids are ints, VQA question ids too)


@dataclass(frozen=True)
class EvalSample:
    id: SampleId  # unique within the dataset; predictions are keyed by it
    image: str | None = None  # image path, relative to the runner's `image_root` when one is given
    text: str = ""  # the question (vqa), the prompt text (t2i), the question stem (multiple_choice); unused for captions
    references: tuple[Any, ...] = ()  # ground truth: reference captions, the 10 VQA answers, the correct choice, ...
    choices: tuple[str, ...] = ()  # candidate continuations (multiple_choice only), scored with score_text
    # interleaved only: in-context demonstrations put before the query, each (image path, text, answer) with the
    # image path relative to the same root as `image`; empty = 0-shot
    shots: tuple[tuple[str, str, str], ...] = ()


@dataclass
class EvalTask:
    name: str = "task"  # e.g. "coco_karpathy_test_caption"; names the results row and the cache
    kind: TaskKind = "caption"  # which model method is called (TASK_METHOD)
    metric: str = "exact_match"  # metric function looked up in eval.runner's registry (or passed in)
    variant: str = ""  # which flavour of the metric the number is, e.g. "coco-caption CIDEr-D, PTB tokenizer"
    prompt: str = ""  # caption: the instruction; vqa/t2i/multiple_choice: a template with a {text} field;
    # interleaved: a demonstration template with {text} and {answer} fields (see `fewshot_parts`)
    generation: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model method (decoding settings)
    version: int = 0  # bump whenever prompt or generation change: caches and results of old versions are not mixed

    def format_text(self, sample: EvalSample) -> str:
        """The text sent to the model for `sample` (the prompt template filled with the sample's text)."""
        if self.kind == "caption":
            return self.prompt
        if self.kind == "interleaved":
            return fewshot_parts(self.prompt, self.name)[0].format(text=sample.text)
        if not self.prompt:
            return sample.text
        try:
            return self.prompt.format(text=sample.text)
        except (KeyError, IndexError) as err:
            raise EvaluationError(
                f"task {self.name!r}: prompt template {self.prompt!r} has a field other than {{text}} ({err})"
            ) from None

    def identity(self) -> dict[str, Any]:
        """Everything about the task that changes the predictions (stored in cache headers).

        The metric and its variant are applied to the cached predictions afterwards, so they are left out: the
        same cache can be rescored with another metric variant without a single model call.
        """
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("metric", "variant")}


def fewshot_parts(template: str, task_name: str = "task") -> tuple[str, str]:
    """(query template, separator) of an interleaved task's demonstration template.

    The template is one demonstration, e.g. "Question: {text} Short answer: {answer}\n": a demonstration is the
    template filled in (`str.format(text=..., answer=...)`); the query is the part before "{answer}" with trailing
    spaces removed ("Question: q Short answer:"); the separator is what follows "{answer}" ("\n"): the model's
    continuation is cut at its first occurrence (stripped; a blank separator with a line break cuts at the first
    line break), where the model would begin another demonstration; no cut when the separator is only spaces."""
    if template.count("{answer}") != 1:
        raise EvaluationError(f"task {task_name!r}: interleaved template {template!r} needs exactly one {{answer}} field")
    query, separator = template.split("{answer}")
    try:
        query.format(text="")
        separator.format()
    except (KeyError, IndexError) as err:
        raise EvaluationError(f"task {task_name!r}: template {template!r} has a field other than {{text}}/{{answer}} ({err})") from None
    return query.rstrip(" "), separator


def interleaved_sequence(
    task: EvalTask, sample: EvalSample, image: Image.Image, shot_images: list[Image.Image]
) -> list[str | Image.Image]:
    """The interleaved input of one sample: [shot image, "demonstration text", ..., query image, "query text"]
    (a text segment is left out when it is empty, e.g. a 0-shot caption query)."""
    query = fewshot_parts(task.prompt, task.name)[0]
    parts: list[str | Image.Image] = []
    for (_, text, answer), shot_image in zip(sample.shots, shot_images, strict=True):
        parts += [shot_image, task.prompt.format(text=text, answer=answer)]
    parts.append(image)
    if query.format(text=sample.text):
        parts.append(query.format(text=sample.text))
    return parts


def cut_continuation(task: EvalTask, continuation: str) -> str:
    """The prediction in a continuation: the text before the template's separator (stripped)."""
    separator = fewshot_parts(task.prompt, task.name)[1]
    stop = separator.strip() or ("\n" if "\n" in separator else "")
    return (continuation.split(stop, 1)[0] if stop else continuation).strip()


def require_method(model: Any, task: EvalTask) -> str:
    """Return the name of the model method `task` needs, or raise naming what the model does implement."""
    if task.kind not in TASK_METHOD:
        raise EvaluationError(f"task {task.name!r}: unknown kind {task.kind!r}; known kinds: {', '.join(TASK_METHOD)}")
    method = TASK_METHOD[task.kind]
    if not callable(getattr(model, method, None)):
        has = [name for name in dict.fromkeys(TASK_METHOD.values()) if callable(getattr(model, name, None))]
        raise UnsupportedTaskError(
            f"task {task.name!r} (kind {task.kind!r}) needs model.{method}(...), which {type(model).__name__} "
            f"does not implement; it implements: {', '.join(has) or 'none of caption/answer/generate_images/score_text/generate_interleaved'}"
        )
    model_id = getattr(model, "model_id", None)
    if not isinstance(model_id, str) or not model_id:
        raise EvaluationError(
            f"{type(model).__name__} has no `model_id` string (got {model_id!r}); adapters must name the model "
            "and its weights so prediction caches of different models are kept apart"
        )
    return method
