"""0-shot and k-shot in-context evaluation (VILA §4, Tables 1, 3, 4, 8, 11: OKVQA, TextVQA, COCO, Flickr30k).

    okvqa_val_4shot, textvqa_val_4shot, coco_karpathy_test_4shot, flickr30k_test_4shot   (+ *_0shot)
    mini_vqa_4shot, mini_caption_4shot                                                   (+ *_0shot, the mini world)
    *_4shot_shuffled   the control: the same demonstrations with their answers deranged among them (`draw_shots`)

(built by `fewshot_spec` over the registered 0-shot task and its benchmark's train-split pool; both are declared, and
the tasks registered, in `eval/tasks.py`.)

A k-shot sample is the test query plus k demonstrations (image, question or nothing, answer) drawn from the
benchmark's *train* split, interleaved before it (`eval.interface.interleaved_sequence`) and sent to the model's
`generate_interleaved`. The demonstrations of a query are drawn with `random.Random(sha256([seed, query id]))`, so
they depend on the seed and the query only (not on --limit, sharding or batching), and a resumed run draws the same.

Seeds. Each k-shot task runs every query once per seed (sample ids "s<seed>/<query id>", one cache, one merge);
the metric is computed per seed and reported as the mean (the headline, e.g. "vqa_accuracy"), the sample standard
deviation over seeds ("vqa_accuracy/std") and each seed's value ("vqa_accuracy/seed=0", ...): all rows of
results.json. 0-shot tasks are the same path with k = 0 and the single seed 0 (std 0).

Demonstration answers: for VQA the most frequent of the question's human answers (ties: the first written), for
captions one of the image's reference captions, drawn with the same generator.

Templates (task data, `TaskSpec.prompt` / `prompt_by_family`): one demonstration with {text} and {answer}, e.g.
"Question: {text} Short answer: {answer}\\n" (OpenFlamingo's VQA format, VILA's ablation protocol is not published);
the query is its part before {answer}, and the model's continuation is cut at the separator after {answer}. The mini
world's tasks use its own phrasing instead, for every family ("Question: {text} Answer: {answer}.\\n", captions
with no prompt: MINI_VQA_TEMPLATE says why).

Train-split files (under the data root, as released):
    COCO       coco/annotations/dataset_coco.json splits train + restval, images coco/images/<filepath>/<filename>
    Flickr30k  flickr30k/annotations/dataset_flickr30k.json split train, images flickr30k/flickr30k-images/
    OK-VQA     okvqa/OpenEnded_mscoco_train2014_questions.json + okvqa/mscoco_train2014_annotations.json,
               images coco/images/train2014/COCO_train2014_<id:012d>.jpg
    TextVQA    textvqa/TextVQA_0.5.1_train.json, images textvqa/train_images/<image_id>.jpg
    mini world eval/captions_train.json, eval/vqa_train_{questions,annotations}.json, images/train/<id>.png
               (harness/miniworld.py `write_fewshot_pool`)
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eval.datasets import _field, read_json
from eval.errors import EvalInputError
from eval.interface import EvalSample, SampleId
from eval.registry import TaskSpec
from eval.runner import MetricFn, get_metric


@dataclass(frozen=True)
class Demo:
    image: str  # path relative to the task's image root
    text: str  # the question ("" for captions)
    answers: tuple[str, ...]  # candidates: the reference captions (one is drawn) or the human answers (the mode is used)
    kind: str = "vqa"  # "vqa" or "caption"

    def answer(self, rng: random.Random) -> str:
        if self.kind == "caption":
            return self.answers[rng.randrange(len(self.answers))]
        counts = Counter(self.answers)
        return max(counts, key=lambda a: (counts[a], -self.answers.index(a)))


def demo_rng(seed: int, query_id: SampleId) -> random.Random:
    digest = hashlib.sha256(json.dumps([seed, str(query_id)]).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_shots(pool: list[Demo], k: int, seed: int, query_id: SampleId, shuffle_answers: bool = False) -> tuple[tuple[str, str, str], ...]:
    """k demonstrations (image, text, answer) for one query: distinct pool entries, a function of (seed, id) only.

    `shuffle_answers` (the control of Min et al. 2022, "Rethinking the role of demonstrations"): the same
    demonstrations, each with the answer of another one (the answers rotated by 1..k-1 places, a derangement), so the
    answers' format and distribution stay and only their link to the image and question breaks. A model that reads
    its demonstrations scores lower with them than with the true ones."""
    if k == 0:
        return ()
    if len(pool) < k:
        raise EvalInputError(f"{k}-shot evaluation needs at least {k} train-split demonstrations, the pool has {len(pool)}")
    rng = demo_rng(seed, query_id)
    shots = [(d.image, d.text, d.answer(rng)) for d in (pool[i] for i in rng.sample(range(len(pool)), k))]
    if shuffle_answers and k > 1:
        shift = rng.randrange(1, k)  # drawn after the demonstrations: they are the unshuffled task's own
        answers = [a for _, _, a in shots]
        shots = [(image, text, answers[(i + shift) % k]) for i, (image, text, _) in enumerate(shots)]
    return tuple(shots)


def seeded_id(seed: int, query_id: SampleId) -> str:
    return f"s{seed}/{query_id}"


def split_id(sample_id: SampleId) -> tuple[int, str]:
    head, _, rest = str(sample_id).partition("/")
    if not head.startswith("s") or not head[1:].isdigit() or not rest:
        raise EvalInputError(f"few-shot sample id {sample_id!r} is not of the form s<seed>/<query id>")
    return int(head[1:]), rest


def with_shots(queries: list[EvalSample], pool: list[Demo], k: int, seeds: tuple[int, ...], shuffle_answers: bool = False) -> list[EvalSample]:
    """Each query once per seed (seed-major order), with its k demonstrations."""
    return [
        EvalSample(id=seeded_id(seed, q.id), image=q.image, text=q.text, references=q.references,
                   shots=draw_shots(pool, k, seed, q.id, shuffle_answers))
        for seed in seeds for q in queries
    ]  # fmt: skip


def seed_averaged(metric: str) -> MetricFn:
    """The registered `metric` computed per seed, reported as mean, sample std over seeds and per-seed values."""
    spec = get_metric(metric)

    def fn(references: dict[SampleId, list[Any]], predictions: dict[SampleId, Any], variant: str) -> dict[str, float]:
        variant = spec.resolve_variant(metric, variant)
        refs_by_seed: dict[int, dict[str, list[Any]]] = {}
        preds_by_seed: dict[int, dict[str, Any]] = {}
        for sample_id, refs in references.items():
            seed, query = split_id(sample_id)
            refs_by_seed.setdefault(seed, {})[query] = refs
        for sample_id, prediction in predictions.items():
            seed, query = split_id(sample_id)
            preds_by_seed.setdefault(seed, {})[query] = prediction
        per_seed = {seed: spec.fn(refs, preds_by_seed.get(seed, {}), variant) for seed, refs in sorted(refs_by_seed.items())}
        out: dict[str, float] = {}
        for name in next(iter(per_seed.values())):
            values = [per_seed[seed][name] for seed in per_seed]
            out[name] = statistics.fmean(values)
            out[f"{name}/std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            out.update({f"{name}/seed={seed}": per_seed[seed][name] for seed in per_seed})
        return out

    return fn


# =============================================================================================
# Demonstration pools: the train splits' official files.


def karpathy_pool(data_root: Path, annotations: str, splits: tuple[str, ...]) -> list[Demo]:
    """Demonstrations from a Karpathy split file: every image of `splits` with its reference captions."""
    path = data_root / annotations
    pool = []
    images = _field(read_json(path, "Karpathy split"), "images", path, "the top level")
    for i, image in enumerate(images):
        if _field(image, "split", path, f"images[{i}]") in splits:
            where = f"images[{i}]"
            relative = "/".join(p for p in (image.get("filepath", ""), _field(image, "filename", path, where)) if p)
            sentences = _field(image, "sentences", path, where)
            captions = tuple(str(_field(s, "raw", path, f"{where}.sentences")) for s in sentences)
            if captions:
                pool.append(Demo(relative, "", captions, "caption"))
    if not pool:
        raise EvalInputError(f"no captioned images in splits {list(splits)} for in-context demonstrations", path)
    return pool


def vqa_pool(data_root: Path, questions: str, annotations: str, image_name: Callable[[Any], str]) -> list[Demo]:
    """Demonstrations from VQAv2-format train files (questions + annotations)."""
    from eval.datasets import parse_vqa_official

    qpath, apath = data_root / questions, data_root / annotations
    qdata, adata = read_json(qpath, "questions"), read_json(apath, "annotations")
    answers = {q.question_id: q.answers for q in parse_vqa_official(qdata, adata, qpath, apath).questions}
    return [
        Demo(image_name(_field(q, "image_id", qpath, f"questions[{i}]")), str(q["question"]), answers[str(q["question_id"])])
        for i, q in enumerate(qdata["questions"])
    ]


def coco_train2014_name(image_id: Any) -> str:
    return f"train2014/COCO_train2014_{int(image_id):012d}.jpg"


OKVQA_TRAIN_QUESTIONS = "okvqa/OpenEnded_mscoco_train2014_questions.json"
OKVQA_TRAIN_ANNOTATIONS = "okvqa/mscoco_train2014_annotations.json"
TEXTVQA_TRAIN = "textvqa/TextVQA_0.5.1_train.json"
MINI_CAPTIONS_TRAIN = "eval/captions_train.json"
MINI_VQA_TRAIN_QUESTIONS = "eval/vqa_train_questions.json"
MINI_VQA_TRAIN_ANNOTATIONS = "eval/vqa_train_annotations.json"
MINI_TRAIN_IMAGES = "images/train/"


# =============================================================================================
# Task specs (registered by eval/tasks.py, which holds the 0-shot tasks and the pools). Decoding: greedy by default;
# LaVIT: its released text decoding (beam search, Gumbel keep mask); VILA: greedy with OpenFlamingo's generation
# lengths (5 new tokens for VQA answers, 20 for captions).

SEEDS_4SHOT = (0, 1, 2)
VQA_TEMPLATE = "Question: {text} Short answer: {answer}\n"
CAPTION_TEMPLATE = "Output: {answer}\n"
LAVIT_VQA_TEMPLATE = "Question: {text} Answer: {answer}\n"  # LaVIT's VQA prompt (§4.1)
LAVIT_CAPTION_TEMPLATE = "{answer}\n"  # LaVIT captions without a prompt
# The mini world's tasks ask in the mini world's own words, for every family: its interleaved documents write a
# question about an image as the sentence "Question: q Answer: a." (model/vila/data.py `write_miniworld_data`; the
# corpora as "Question: q Answer: a", harness/miniworld.py VQA_PROMPT) and a caption right after its image, with no
# prompt. The period ends the answer (the prediction is the continuation cut there). OpenFlamingo's "Short answer:"
# and "Output:" are phrases a real LLM has read on the web; the mini corpora never contain "short" or "output", so to
# the mini models they are unseen tokens: with them the 4-shot VQA of every mini VILA row answered with captions
# ("triangle that is black.") at 0-20 %, while the same models answer the same questions at 95 % with their SFT
# prompt (VILA Table 5).
MINI_VQA_TEMPLATE = "Question: {text} Answer: {answer}.\n"
MINI_CAPTION_TEMPLATE = "{answer}\n"
QUESTION_KEYS = ("question_template", "question_processing", "lemmatize")  # the template carries the question here
FEWSHOT_VILA_VQA = {"num_beams": 1, "do_sample": False, "max_new_tokens": 5}
FEWSHOT_VILA_CAPTION = {"num_beams": 1, "do_sample": False, "max_new_tokens": 20}

Pool = tuple[Callable[[Path], list[Demo]], tuple[str, ...]]  # (reader of the demonstrations, the train files it needs)


def fewshot_spec(
    base_spec: TaskSpec, k: int, pool: Pool, *, caption: bool, description: str, greedy: dict[str, Any],
    lavit: dict[str, Any], version: int = 1, shuffle_answers: bool = False, template: str | None = None,
) -> TaskSpec:  # fmt: skip
    """`{base}_{k}shot`: the 0-shot task `base_spec` (its test reader and files) with k demonstrations from `pool`.
    `greedy` is the default decoding, `lavit` LaVIT's. `shuffle_answers`: `{base}_{k}shot_shuffled`, the same
    demonstrations with their answers deranged (`draw_shots`), the control that shows whether the model reads them.
    `template`: one demonstration's template for every family (the mini world's tasks); by default OpenFlamingo's,
    and LaVIT's own for LaVIT."""
    pool_reader, pool_files = pool
    seeds = SEEDS_4SHOT if k else (0,)
    metric = "cider" if caption else base_spec.metric

    def reader(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
        queries, image_root = base_spec.read(data_root, limit)
        demos = pool_reader(data_root) if k else []
        return with_shots(queries, demos, k, seeds, shuffle_answers), image_root

    protocol = f"seeds {', '.join(map(str, seeds))}, mean and std" if k else "no demonstrations"
    protocol += ", demonstration answers shuffled among the demonstrations" if shuffle_answers else ""
    return TaskSpec(
        name=f"{base_spec.name}_{k}shot" + ("_shuffled" if shuffle_answers else ""), version=version, kind="interleaved",
        split=base_spec.split, description=f"{description}, {k}-shot in context ({protocol})",
        files=base_spec.files + (pool_files if k else ()),
        layout=base_spec.layout + (f"; demonstrations: {' + '.join(pool_files)} (train split)" if k else ""),
        metric=metric, headline=base_spec.headline, reader=reader,
        prompt=template or (CAPTION_TEMPLATE if caption else VQA_TEMPLATE),
        prompt_by_family={"lavit": template or (LAVIT_CAPTION_TEMPLATE if caption else LAVIT_VQA_TEMPLATE)},
        generation=greedy,
        generation_by_family={"lavit": lavit, "vila": FEWSHOT_VILA_CAPTION if caption else FEWSHOT_VILA_VQA},
        metric_builder=lambda data_root, out_dir: seed_averaged(metric),
    )  # fmt: skip
