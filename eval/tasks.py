"""The evaluation tasks: one versioned spec per benchmark split, with its files, prompt, decoding and metric.

    spec = get_task("vqav2_val")
    samples, image_root = spec.read(data_root, limit=None)     # EvalSamples + the folder their image paths are under
    task = spec.eval_task("lavit")                             # the EvalTask the runner takes (family-specific decoding)

Every dataset lives under one `--data-root`, each in the layout it was released in (`LAYOUTS` below names the files;
`python -m eval --help` prints them). A spec's `files` are checked before any model is loaded, so a missing file is
one line naming it and the layout.

Decoding settings live here and nowhere else: `generation` is a task's default (greedy), `generation_by_family`
overrides it key by key for one model family (LaVIT's released evaluation settings below). A change to the prompt,
the decoding, the reader or the metric bumps `version`; prediction caches and results record it, so numbers made
under another protocol are never mixed with new ones.

Metrics come from `eval.runner`'s registry (`cider` is registered here: CIDEr-D x 100, the papers' scale). Two
tasks need more than (references, predictions): NoCaps' per-domain CIDEr needs the images' domains and COCO-30k's
FID needs the real images, so their specs carry a `metric_builder(data_root, out_dir) -> metric function`.

Kinds: caption / vqa / t2i / multiple_choice / interleaved run through `eval.runner.evaluate` on the family's adapter;
`lm_eval` tasks run lm-eval on the family's text-only LM (`LoadedModel.llm`) through `eval.mmlu` (MMLU-format CSVs)
or `eval.text_benchmarks` (BBH, DROP).

Every task is registered here, in this order: the benchmarks' own tasks; VILA Table 5's other benchmarks (readers and
scorers in `eval.vlm_benchmarks` and `eval.judge`: ScienceQA-IMG, POPE, MME, MMBench, SEED-Bench; LLaVA-Bench, MM-Vet);
the 0-/4-shot in-context versions (kind interleaved, built by `eval.fewshot`); BBH and DROP (`eval.text_benchmarks`).
The spec type and the lookup are `eval/registry.py`'s, imported here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from eval.datasets import (
    _field,
    id_key,
    parse_vqa_official,
    read_coco_captions,
    read_gqa,
    read_json,
    read_karpathy_captions,
    read_vizwiz,
)
from eval import fewshot, text_benchmarks
from eval import judge as J
from eval import vlm_benchmarks as B
from eval.errors import EvalInputError
from eval.interface import EvalSample
# The spec type and the lookup live in eval/registry.py (below the modules that build specs); `eval.tasks` is where
# callers find them, with every task registered.
from eval.registry import (  # noqa: F401
    KINDS,
    TASKS,
    MetricBuilder,
    Reader,
    TaskDataError,
    TaskSpec,
    describe_tasks,
    get_task,
    parse_task_list,
    register_task,
)
from eval.runner import MetricFn, register_metric

# =============================================================================================
# Decoding settings. The defaults are greedy; LaVIT's are those of its released evaluation code (paper §4.1 and the
# official repository): captions with no prompt, 2 beams, 8-36 new tokens, length penalty 1 (its adapter cuts the
# caption at the first '.'); VQA with "Question: {} Answer:", 5 beams, 2-10 new tokens, length penalty 0, early
# stopping. Text-to-image (App. A): top-k sampling with k = 300 ("top-k sampling ... t_ok = 300"), temperature 1.0,
# gamma_cfg 1.5; the paper gives no token bounds, so the released defaults (20-200 visual tokens), and the released
# pixel decoder's 50 DDIM steps with guidance 5.0.
#
# LaVIT's Table 1 tasks run the released protocol as a whole (model/lavit/eval_adapter.py reads these keys):
# - decoding "released": beams scored as transformers 4.33 did when the paper's numbers were made;
# - selection "gumbel" with seed 0: the release draws the keep mask with hard Gumbel noise even at inference;
# - VQA questions raw (the family's prompt is "{text}"), normalised as released (lower-case, . ! " ( ) * # : ; ~
#   deleted, 50 words), then put into "Question: {} Answer:"; answers lemmatised with spaCy as released (applied
#   when spaCy and en_core_web_sm are installed; each result records "lemmatised" or "not lemmatised");
# - VizWiz only: the released answerability question first, "unanswerable" when the judgement says no.
# The mini world's tasks keep that protocol (decoding, Gumbel keep mask with seed 0, question processing; the noise
# is drawn per image from the seed and the image's pixels, so results do not depend on batching) but do not lemmatise
# (easy-VQA's answers are single words that lemmatisation would only perturb, and spaCy is optional).

GREEDY_CAPTION = {"num_beams": 1, "min_new_tokens": 1, "max_new_tokens": 36, "length_penalty": 1.0, "early_stopping": False}
GREEDY_VQA = {"num_beams": 1, "min_new_tokens": 1, "max_new_tokens": 10, "length_penalty": 1.0, "early_stopping": False}
LAVIT_RELEASED = {"decoding": "released", "selection": "gumbel", "seed": 0}
LAVIT_QUESTIONS = {"question_template": "Question: {} Answer:", "question_processing": "released"}
LAVIT_CAPTION = {"num_beams": 2, "min_new_tokens": 8, "max_new_tokens": 36, "length_penalty": 1.0, "early_stopping": False,
                 **LAVIT_RELEASED}  # fmt: skip
LAVIT_VQA = {"num_beams": 5, "min_new_tokens": 2, "max_new_tokens": 10, "length_penalty": 0.0, "early_stopping": True,
             **LAVIT_RELEASED, **LAVIT_QUESTIONS, "lemmatize": True}  # fmt: skip
LAVIT_VIZWIZ = {**LAVIT_VQA, "answerability_prompt": 'Is the question: "{}" answerable?'}
# The released minimum lengths count LLaMA SentencePiece tokens (a caption of 8+ pieces, an answer of 2+ pieces,
# e.g. "▁yes" ","); the mini world's BPE spells "a red circle." or "triangle" in fewer ids, and a minimum above
# that forces the beam past the end of every caption/answer it was trained on. The mini tasks keep the released
# maxima and take the smallest minimum that still rules out an empty output.
LAVIT_MINI_CAPTION = {**LAVIT_CAPTION, "min_new_tokens": 2}
LAVIT_MINI_VQA = {**LAVIT_VQA, "lemmatize": False, "min_new_tokens": 1}
LAVIT_T2I = {"top_k": 300, "temperature": 1.0, "cfg_scale": 1.5, "min_new_tokens": 20, "max_new_tokens": 200,
             "num_inference_steps": 50, "decoder_guidance_scale": 5.0}  # fmt: skip
# The mini world's text-to-image task: its images have at most N = 16 visual tokens (56 px / patch 14), fewer
# than the released minimum of 20; 1-16 tokens, and 25 DDIM steps of the mini pixel decoder (CPU time). Sampling
# (top-k 300, temperature 1, CFG 1.5, decoder guidance 5) as released.
LAVIT_MINI_T2I = {**LAVIT_T2I, "min_new_tokens": 1, "max_new_tokens": 16, "num_inference_steps": 25}
VQA_PROMPT = "Question: {text} Answer:"  # LaVIT §4.1 "Question: {} Answer: {}"
RAW_QUESTION = "{text}"  # the family's adapter templates the question itself (after its own question processing)


# VILA: its released evaluation (LLaVA-1.5's scripts, which VILA follows "using the same prompts"): greedy decoding,
# the conversation template of VILA-7B/13B ("vicuna_v1", applied by VILA's adapter), at most 128 new tokens (1024 for
# the free-form and ScienceQA answers), and the benchmarks' answer instructions appended to the question.
VILA_CONV_TEMPLATE = "vicuna_v1"
VILA_GREEDY = {"num_beams": 1, "do_sample": False, "max_new_tokens": 128, "conv_template": VILA_CONV_TEMPLATE}
VILA_GREEDY_LONG = {**VILA_GREEDY, "max_new_tokens": 1024}
SHORT_ANSWER = "{text}\nAnswer the question using a single word or phrase."
VIZWIZ_ANSWER = "{text}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "{text}\nAnswer with the option's letter from the given choices directly."
LETTER_ANSWER_CN = "{text}\n请直接回答选项字母。"
VILA_CAPTION = "Provide a one-sentence caption for the provided image."  # LLaVA-1.5's COCO caption instruction


def caption_spec(lavit: dict[str, Any] = LAVIT_CAPTION, **kw: Any) -> TaskSpec:
    return TaskSpec(kind="caption", metric="cider", headline="CIDEr", generation=GREEDY_CAPTION,
                    generation_by_family={"lavit": lavit, "vila": VILA_GREEDY},
                    prompt_by_family={"vila": VILA_CAPTION}, **kw)  # fmt: skip


def vqa_spec(lavit: dict[str, Any] = LAVIT_VQA, vila_prompt: str = SHORT_ANSWER, **kw: Any) -> TaskSpec:
    kw.setdefault("metric", "vqa_accuracy")
    kw.setdefault("headline", kw["metric"])
    return TaskSpec(kind="vqa", prompt=VQA_PROMPT, generation=GREEDY_VQA,
                    generation_by_family={"lavit": lavit, "vila": VILA_GREEDY},
                    prompt_by_family={"lavit": RAW_QUESTION, "vila": vila_prompt}, **kw)  # fmt: skip


def instruction_spec(prompt: str, vila: dict[str, Any] = VILA_GREEDY, **kw: Any) -> TaskSpec:
    """A VILA Table 5 benchmark: the question with its answer instruction, greedy (the same for every family)."""
    kw.setdefault("headline", "accuracy")
    return TaskSpec(kind="vqa", prompt=prompt, generation=GREEDY_VQA, generation_by_family={"vila": vila}, **kw)


# =============================================================================================
# CIDEr on the papers' scale, and NoCaps' per-domain CIDEr.


@register_metric("cider", variants=("coco-caption CIDEr-D x100, PTB tokenizer",))
def cider(references: dict[Any, list[Any]], predictions: dict[Any, Any], variant: str) -> dict[str, float]:
    """CIDEr-D (pycocoevalcap's `Cider`, PTB-tokenized; missing captions score as empty) times 100, as papers report."""
    return _cider(references, predictions, None)


def _cider(references: dict[Any, list[Any]], predictions: dict[Any, Any], domains: dict[str, str] | None) -> dict[str, float]:
    from pycocoevalcap.cider.cider import Cider

    from eval.caption import cider_by_domain, ptb_tokenize

    ids = [str(i) for i in references]
    refs = {str(i): [str(r) for r in v] for i, v in references.items()}
    preds = {str(i): str(v) for i, v in predictions.items()}
    tokenized = ptb_tokenize({**{("ref", i): refs[i] for i in ids}, **{("res", i): [preds.get(i, "")] for i in ids}})
    gts = {i: tokenized[("ref", i)] for i in ids}
    res = {i: tokenized[("res", i)] for i in ids}
    values = {"CIDEr": 100.0 * float(Cider().compute_score(gts, res)[0])}
    if domains is not None:
        for domain, scores in cider_by_domain(gts, res, {i: domains[i] for i in ids}).items():
            values[f"CIDEr/{domain}"] = 100.0 * scores["CIDEr"]
    return values


def nocaps_metric(data_root: Path, out_dir: Path) -> MetricFn:
    domains = read_coco_captions(data_root / NOCAPS_ANNOTATIONS).domains or {}

    def metric(references: dict[Any, list[Any]], predictions: dict[Any, Any], variant: str) -> dict[str, float]:
        return _cider(references, predictions, domains)

    return metric


# =============================================================================================
# Readers: official files -> EvalSamples. Ids are the dataset's own (COCO image ids, question ids, ...).


def _take(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def _karpathy(data_root: Path, annotations: str, image_dir: str, split: str, limit: int | None) -> tuple[list[EvalSample], Path]:
    """Karpathy-split file (`dataset_coco.json`, `dataset_flickr30k.json`): images of one split with their sentences.

    Image paths are `<image_dir>/<filepath>/<filename>` (COCO records carry filepath "val2014"; Flickr30k's do not).
    """
    path = data_root / annotations
    refs = read_karpathy_captions(path, split)  # validates, and keys images as their predictions are keyed
    samples = []
    for i, image in enumerate(read_json(path, "Karpathy split")["images"]):
        if image["split"] != split:
            continue
        stem = Path(image["filename"]).stem  # the same id rule as read_karpathy_captions
        key = id_key(image["cocoid"] if "cocoid" in image else (int(stem) if stem.isdigit() else stem), path, "image id")
        relative = "/".join(p for p in (image.get("filepath", ""), image["filename"]) if p)
        samples.append(EvalSample(id=refs.original_ids[key], image=relative, references=tuple(refs.refs[key])))
    return _take(samples, limit), data_root / image_dir


COCO_KARPATHY = "coco/annotations/dataset_coco.json"
COCO_IMAGES = "coco/images/"
FLICKR_KARPATHY = "flickr30k/annotations/dataset_flickr30k.json"
FLICKR_IMAGES = "flickr30k/flickr30k-images/"
NOCAPS_ANNOTATIONS = "nocaps/annotations/nocaps_val_4500_captions.json"
NOCAPS_IMAGES = "nocaps/images/val/"


def read_coco_karpathy_test(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _karpathy(data_root, COCO_KARPATHY, COCO_IMAGES, "test", limit)


def read_flickr30k_test(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _karpathy(data_root, FLICKR_KARPATHY, FLICKR_IMAGES, "test", limit)


def read_nocaps_val(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    path = data_root / NOCAPS_ANNOTATIONS
    refs = read_coco_captions(path)
    if refs.domains is None:
        raise EvalInputError("NoCaps annotations have no image 'domain' fields (is this a plain COCO captions file?)", path)
    samples = []
    for i, image in enumerate(read_json(path, "NoCaps annotations")["images"]):
        key = id_key(image["id"], path, f"images[{i}].id")
        name = _field(image, "file_name", path, f"images[{i}]")
        samples.append(EvalSample(id=refs.original_ids[key], image=name, references=tuple(refs.refs[key])))
    return _take(samples, limit), data_root / NOCAPS_IMAGES


def _vqa_official(
    data_root: Path, questions: str, annotations: str, image_dir: str, image_name: Callable[[Any], str], limit: int | None
) -> tuple[list[EvalSample], Path]:
    """VQAv2-format questions + annotations; the sample's references are the human answers (10 for VQAv2)."""
    qpath, apath = data_root / questions, data_root / annotations
    qdata, adata = read_json(qpath, "questions"), read_json(apath, "annotations")
    dataset = parse_vqa_official(qdata, adata, qpath, apath)  # validates both files against each other
    answers = {q.question_id: q.answers for q in dataset.questions}
    samples = []
    for i, q in enumerate(qdata["questions"]):
        where = f"questions[{i}]"
        key = id_key(q["question_id"], qpath, f"{where}.question_id")
        samples.append(
            EvalSample(
                id=q["question_id"],
                image=image_name(_field(q, "image_id", qpath, where)),
                text=str(_field(q, "question", qpath, where)),
                references=answers[key],
            )
        )
    return _take(samples, limit), data_root / image_dir


def coco_val2014_name(image_id: Any) -> str:
    return f"val2014/COCO_val2014_{int(image_id):012d}.jpg"


VQAV2_QUESTIONS = "vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
VQAV2_ANNOTATIONS = "vqav2/v2_mscoco_val2014_annotations.json"
OKVQA_QUESTIONS = "okvqa/OpenEnded_mscoco_val2014_questions.json"
OKVQA_ANNOTATIONS = "okvqa/mscoco_val2014_annotations.json"
GQA_QUESTIONS = "gqa/testdev_balanced_questions.json"
GQA_IMAGES = "gqa/images/"
VIZWIZ_ANNOTATIONS = "vizwiz/Annotations/val.json"
VIZWIZ_IMAGES = "vizwiz/val/"
COCO_CAPTIONS_VAL2014 = "coco/annotations/captions_val2014.json"


def read_vqav2_val(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _vqa_official(data_root, VQAV2_QUESTIONS, VQAV2_ANNOTATIONS, COCO_IMAGES, coco_val2014_name, limit)


def read_okvqa_val(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _vqa_official(data_root, OKVQA_QUESTIONS, OKVQA_ANNOTATIONS, COCO_IMAGES, coco_val2014_name, limit)


def read_gqa_testdev(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    path = data_root / GQA_QUESTIONS
    answers = {q.question_id: q.answers for q in read_gqa(path).questions}
    samples = [
        EvalSample(
            id=str(qid),
            image=f"{_field(record, 'imageId', path, f'question {qid!r}')}.jpg",
            text=str(_field(record, "question", path, f"question {qid!r}")),
            references=answers[str(qid)],
        )
        for qid, record in read_json(path, "GQA questions").items()
    ]
    return _take(samples, limit), data_root / GQA_IMAGES


def read_vizwiz_val(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    path = data_root / VIZWIZ_ANNOTATIONS
    answers = {q.question_id: q.answers for q in read_vizwiz(path).questions}
    samples = [
        EvalSample(id=r["image"], image=r["image"], text=str(_field(r, "question", path, f"[{i}]")), references=answers[r["image"]])
        for i, r in enumerate(read_json(path, "VizWiz annotations"))
    ]
    return _take(samples, limit), data_root / VIZWIZ_IMAGES


TEXTVQA_VAL = "textvqa/TextVQA_0.5.1_val.json"
TEXTVQA_IMAGES = "textvqa/train_images/"  # the release puts the train and val images in one folder


def textvqa_samples(path: Path) -> list[EvalSample]:
    """A TextVQA release file ({"data": [{question_id, image_id, question, answers: [10], ...}]}) as samples; image
    paths "<image_id>.jpg" are relative to TEXTVQA_IMAGES."""
    records = _field(read_json(path, "TextVQA questions"), "data", path, "the top level")
    samples, seen = [], set()
    for i, r in enumerate(records):
        where = f"data[{i}]"
        qid = _field(r, "question_id", path, where)
        if id_key(qid, path, f"{where}.question_id") in seen:
            raise EvalInputError(f"question id {qid!r} appears twice", path, qid)
        seen.add(str(qid))
        answers = _field(r, "answers", path, where)
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise EvalInputError(f"{where}: answers must be a non-empty list of strings", path, qid)
        samples.append(EvalSample(id=qid, image=f"{_field(r, 'image_id', path, where)}.jpg",
                                  text=str(_field(r, "question", path, where)), references=tuple(answers)))  # fmt: skip
    if not samples:
        raise EvalInputError("no questions", path)
    return samples


def read_textvqa_val(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _take(textvqa_samples(data_root / TEXTVQA_VAL), limit), data_root / TEXTVQA_IMAGES


def read_coco30k(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """COCO-30k prompts (eval/coco30k.py: fixed seed, one caption per image); the sample's image is the real one.

    The 30,000-prompt sample is drawn first and `limit` takes its first prompts, so a limited run is a prefix of the
    full protocol. A val2014 with fewer captioned images (a fixture) gives every image once; `n_total` says how many.
    """
    from eval.coco30k import DEFAULT_NUM_PROMPTS, sample_prompts

    path = data_root / COCO_CAPTIONS_VAL2014
    n_images = len({a["image_id"] for a in _field(read_json(path, "COCO captions"), "annotations", path, "the top level")})
    prompts = sample_prompts(path, min(DEFAULT_NUM_PROMPTS, n_images))
    samples = [EvalSample(id=p["index"], image=f"val2014/{p['file_name']}", text=p["caption"], references=(f"val2014/{p['file_name']}",))
               for p in prompts]  # fmt: skip
    return _take(samples, limit), data_root / COCO_IMAGES


def coco30k_fid_metric(data_root: Path, out_dir: Path) -> MetricFn:
    """FID between the generated images and their prompts' real images, both center-cropped and resized to 256."""

    def metric(references: dict[Any, list[Any]], predictions: dict[Any, Any], variant: str) -> dict[str, float]:
        from eval.coco30k import DEFAULT_SIZE, _resize_files
        from eval.fid import compute_fid

        real, fake = out_dir / "fid_real256", out_dir / "fid_fake256"
        pairs_real = [(data_root / COCO_IMAGES / refs[0], real / f"{i}.png") for i, refs in references.items()]
        pairs_fake = [(Path(p), fake / f"{i}.png") for i, p in predictions.items()]
        _resize_files([(s, t) for s, t in pairs_real + pairs_fake if not t.is_file()], DEFAULT_SIZE)
        return {"FID": float(compute_fid(real, fake)["fid"])}

    return metric


MINI_T2I_VARIANT = "torch-fidelity InceptionV3 (TF 2015-12-05), real images resized to the generated size, + KID, 1 sample per prompt"


@register_metric("fid", variants=("torch-fidelity InceptionV3 (TF 2015-12-05), 256px center crop, 1 sample per prompt", MINI_T2I_VARIANT))
def fid(references: dict[Any, list[Any]], predictions: dict[Any, Any], variant: str) -> dict[str, float]:
    """Registered for its name and variant only: FID needs the real images, which `coco30k_fid_metric` knows."""
    raise EvalInputError("the fid metric needs the task's real images: run it through eval.tasks (task coco30k_fid)")


# ----- the mini world (harness/miniworld.py writes it; its root is the data root of these tasks)

MINI_CAPTIONS = "eval/captions_test.json"
MINI_VQA_QUESTIONS = "eval/vqa_test_questions.json"
MINI_VQA_ANNOTATIONS = "eval/vqa_test_annotations.json"
MINI_IMAGES = "images/test/"


def mini_image_id(image: str) -> str:
    """The test image id of a mini task sample's image path: the inverse of the readers' `MINI_IMAGES<id>.png`."""
    if not (image.startswith(MINI_IMAGES) and image.endswith(".png")):
        raise EvalInputError(f"{image!r} is not a mini-world test image path ({MINI_IMAGES}<id>.png)")
    return image[len(MINI_IMAGES) : -len(".png")]


def read_mini_caption(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    # Its records carry filepath "images/test": image paths are relative to the mini-world root.
    return _karpathy(data_root, MINI_CAPTIONS, "", "test", limit)


def read_mini_vqa(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    return _vqa_official(data_root, MINI_VQA_QUESTIONS, MINI_VQA_ANNOTATIONS, "", lambda i: f"{MINI_IMAGES}{i}.png", limit)


def shuffle_images(samples: list[EvalSample], seed: int = 0) -> list[EvalSample]:
    """The same samples with their images permuted among them: every distinct image is replaced by another one (a
    seeded derangement of the distinct images), so no question keeps its own picture. The image-shuffle control:
    a model whose answers come from the image falls to the blind baselines on it."""
    import random

    images = sorted({s.image for s in samples if s.image is not None})
    if len(images) < 2:
        raise EvalInputError(f"an image shuffle needs at least 2 distinct images, got {len(images)}")
    order = images[:]
    random.Random(f"{seed}/image_shuffle").shuffle(order)
    moved = {a: b for a, b in zip(order, order[1:] + order[:1])}  # each image to the next one of a random cycle
    return [dataclasses.replace(s, image=moved.get(s.image, s.image)) for s in samples]


def read_mini_vqa_image_shuffle(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """Every test question with the images permuted over the whole test set, then the first `limit`: the same
    questions as mini_vqa's first `limit`, each shown another test image whatever the limit."""
    samples, root = read_mini_vqa(data_root, None)
    return shuffle_images(samples)[:limit], root


def read_mini_t2i(data_root: Path, limit: int | None) -> tuple[list[EvalSample], Path]:
    """One prompt per test image: its first reference caption ("a red circle."); the sample's image (and its one
    reference) is the real test image, whose distribution the generated images are compared with."""
    path = data_root / MINI_CAPTIONS
    samples = []
    for i, image in enumerate(_field(read_json(path, "mini-world captions"), "images", path, "the top level")):
        relative = "/".join(p for p in (image.get("filepath", ""), image["filename"]) if p)
        text = _field(image["sentences"][0], "raw", path, f"images[{i}].sentences[0]") if image.get("sentences") else ""
        if not text:
            raise EvalInputError(f"images[{i}] has no reference caption to use as a prompt", path)
        samples.append(EvalSample(id=int(image["imgid"]), image=relative, text=str(text), references=(relative,)))
    return _take(samples, limit), data_root


def mini_t2i_metric(data_root: Path, out_dir: Path) -> MetricFn:
    """FID and KID between the generated images and the real test images of the same prompts, the real ones
    resized (bicubic, as the pixel decoder's training images) to the generated size; features cached beside the
    task's folder (out_dir/../fid_features: shared by the tasks of one evaluation, e.g. two seeds). Small samples bias FID upwards (compare rows only at equal counts); KID is unbiased."""

    def metric(references: dict[Any, list[Any]], predictions: dict[Any, Any], variant: str) -> dict[str, float]:
        from PIL import Image

        from eval.coco30k import _resize_files
        from eval.fid import fid_kid_files

        with Image.open(next(iter(predictions.values()))) as first:
            size = first.width
        real = out_dir / f"real{size}"
        pairs = [(data_root / refs[0], real / f"{i}.png") for i, refs in references.items()]
        _resize_files([(s, t) for s, t in pairs if not t.is_file()], size)
        scores = fid_kid_files([str(t) for _, t in pairs], sorted(predictions.values()), out_dir.parent / "fid_features")
        return {"FID": scores["fid"], "KID": scores["kid_mean"], "KID_std": scores["kid_std"]}

    return metric


# =============================================================================================
# The registry. Layouts are the datasets' release layouts under one data root.

KARPATHY_LAYOUT = "{ann} (Karpathy's split file: images[].split/filename/sentences) + {img}<filepath>/<filename>"


@register_task
def coco_karpathy_test() -> TaskSpec:
    return caption_spec(
        name="coco_karpathy_test", version=2, split="test",
        description="COCO captions, Karpathy test split (5,000 images), CIDEr (LaVIT README: 134.0 paper model)",
        files=(COCO_KARPATHY, COCO_IMAGES),
        layout=KARPATHY_LAYOUT.format(ann=COCO_KARPATHY, img=COCO_IMAGES) + " (val2014/COCO_val2014_<id:012d>.jpg)",
        reader=read_coco_karpathy_test,
    )  # fmt: skip


@register_task
def nocaps_val() -> TaskSpec:
    return caption_spec(
        name="nocaps_val", version=2, split="val",
        description="NoCaps val (4,500 images), CIDEr overall and per domain (LaVIT Table 1: 114.2)",
        files=(NOCAPS_ANNOTATIONS, NOCAPS_IMAGES),
        layout=f"{NOCAPS_ANNOTATIONS} (COCO format, images[].domain) + {NOCAPS_IMAGES}<file_name>",
        reader=read_nocaps_val, variant="coco-caption CIDEr-D x100, PTB tokenizer, per NoCaps domain",
        metric_builder=nocaps_metric,
    )  # fmt: skip


@register_task
def flickr30k_test() -> TaskSpec:
    return caption_spec(
        name="flickr30k_test", version=2, split="test",
        description="Flickr30k, Karpathy test split (1,000 images), CIDEr (LaVIT Table 1: 83.0)",
        files=(FLICKR_KARPATHY, FLICKR_IMAGES),
        layout=KARPATHY_LAYOUT.format(ann=FLICKR_KARPATHY, img=FLICKR_IMAGES).replace("<filepath>/", ""),
        reader=read_flickr30k_test,
    )  # fmt: skip


@register_task
def vqav2_val() -> TaskSpec:
    # VQAv2 test-dev has no public answers (EvalAI server only), so the locally scorable split is val.
    return vqa_spec(
        name="vqav2_val", version=2, split="val",
        description="VQAv2 val (214k questions), VQA accuracy (LaVIT Table 1: 66.0, split not stated)",
        files=(VQAV2_QUESTIONS, VQAV2_ANNOTATIONS, COCO_IMAGES),
        layout=f"{VQAV2_QUESTIONS} + {VQAV2_ANNOTATIONS} (official VQAv2 files) + {COCO_IMAGES}val2014/COCO_val2014_<id:012d>.jpg",
        reader=read_vqav2_val,
    )  # fmt: skip


@register_task
def okvqa_val() -> TaskSpec:
    return vqa_spec(
        name="okvqa_val", version=2, split="val",
        description="OK-VQA val (5,046 questions), VQA accuracy (LaVIT Table 1: 54.6)",
        files=(OKVQA_QUESTIONS, OKVQA_ANNOTATIONS, COCO_IMAGES),
        layout=f"{OKVQA_QUESTIONS} + {OKVQA_ANNOTATIONS} (official OK-VQA files) + {COCO_IMAGES}val2014/COCO_val2014_<id:012d>.jpg",
        reader=read_okvqa_val,
    )  # fmt: skip


@register_task
def gqa_testdev() -> TaskSpec:
    return vqa_spec(
        name="gqa_testdev", version=2, split="testdev-balanced",
        description="GQA test-dev balanced (12,578 questions), accuracy (LaVIT Table 1: 46.8)",
        files=(GQA_QUESTIONS, GQA_IMAGES),
        layout=f"{GQA_QUESTIONS} (official GQA file, keyed by question id) + {GQA_IMAGES}<imageId>.jpg",
        reader=read_gqa_testdev, metric="gqa_accuracy",
    )  # fmt: skip


@register_task
def vizwiz_val() -> TaskSpec:
    return vqa_spec(
        name="vizwiz_val", version=2, split="val",
        description="VizWiz-VQA val (4,319 questions), VQA accuracy (LaVIT Table 1: 38.5, split not stated)",
        files=(VIZWIZ_ANNOTATIONS, VIZWIZ_IMAGES),
        layout=f"{VIZWIZ_ANNOTATIONS} (official VizWiz list) + {VIZWIZ_IMAGES}<image>",
        reader=read_vizwiz_val, lavit=LAVIT_VIZWIZ, vila_prompt=VIZWIZ_ANSWER,
    )  # fmt: skip


@register_task
def textvqa_val() -> TaskSpec:
    return vqa_spec(
        name="textvqa_val", version=1, split="val",
        description="TextVQA val (5,000 questions), VQA accuracy, no OCR tokens in the prompt (VILA Table 5: 64.4 / 66.6)",
        files=(TEXTVQA_VAL, TEXTVQA_IMAGES),
        layout=f"{TEXTVQA_VAL} (official TextVQA 0.5.1 file) + {TEXTVQA_IMAGES}<image_id>.jpg",
        reader=read_textvqa_val,
    )  # fmt: skip


@register_task
def coco30k_fid() -> TaskSpec:
    return TaskSpec(
        name="coco30k_fid", version=1, kind="t2i", split="val2014",
        description="MS-COCO-30k zero-shot text-to-image FID (LaVIT Table 2: 7.4); one sample per prompt, no CLIP rerank",
        files=(COCO_CAPTIONS_VAL2014, COCO_IMAGES + "val2014/"),
        layout=f"{COCO_CAPTIONS_VAL2014} (official COCO captions) + {COCO_IMAGES}val2014/<file_name>",
        reader=read_coco30k, metric="fid", headline="FID", metric_builder=coco30k_fid_metric,
        generation={"seed": 0}, generation_by_family={"lavit": LAVIT_T2I},
    )  # fmt: skip


MMLU_LAYOUT = "{root}dev/<subject>_dev.csv + {root}test/<subject>_test.csv (header question,choice0..choice3,answer)"


@register_task
def mmlu() -> TaskSpec:
    return TaskSpec(
        name="mmlu", version=1, kind="lm_eval", split="test",
        description="MMLU 5-shot through lm-eval (57 subjects), accuracy micro-averaged (LaVIT Table 4, VILA Table 6)",
        files=("mmlu/dev/", "mmlu/test/"), layout=MMLU_LAYOUT.format(root="mmlu/") + " (../shared/data/mmlu)",
        metric="mmlu_accuracy", headline="accuracy",
        lm_eval={"data": "mmlu", "num_fewshot": 5, "known_subjects_only": True},
    )  # fmt: skip


@register_task
def mini_caption() -> TaskSpec:
    return caption_spec(
        name="mini_caption", version=4, split="test",
        description="mini world: captions of its test images, CIDEr",
        files=(MINI_CAPTIONS, MINI_IMAGES),
        layout=f"mini-world root: {MINI_CAPTIONS} (Karpathy format, split test, filepath images/test, filename <id>.png) + {MINI_IMAGES}<id>.png",
        reader=read_mini_caption, lavit=LAVIT_MINI_CAPTION,
    )  # fmt: skip


@register_task
def mini_vqa() -> TaskSpec:
    return vqa_spec(
        name="mini_vqa", version=4, split="test",
        description="mini world: questions about its test images, VQA accuracy",
        files=(MINI_VQA_QUESTIONS, MINI_VQA_ANNOTATIONS, MINI_IMAGES),
        layout=f"mini-world root: {MINI_VQA_QUESTIONS} + {MINI_VQA_ANNOTATIONS} (VQAv2 format) + {MINI_IMAGES}<image_id>.png",
        reader=read_mini_vqa, lavit=LAVIT_MINI_VQA,
    )  # fmt: skip


@register_task
def mini_vqa_image_shuffle() -> TaskSpec:
    """mini_vqa itself (files, prompt, decoding, metric) with the images permuted among the questions."""
    return dataclasses.replace(
        mini_vqa(), name="mini_vqa_image_shuffle", version=2, reader=read_mini_vqa_image_shuffle,
        description="mini world: mini_vqa with the test images permuted among the questions (a control), VQA accuracy",
    )  # fmt: skip


@register_task
def mini_t2i() -> TaskSpec:
    return TaskSpec(
        name="mini_t2i", version=1, kind="t2i", split="test",
        description="mini world: text-to-image from test captions, FID and KID against the real test images (one sample per prompt)",
        files=(MINI_CAPTIONS, MINI_IMAGES),
        layout=f"mini-world root: {MINI_CAPTIONS} (Karpathy format; the first sentence of each image is its prompt) + {MINI_IMAGES}<id>.png",
        reader=read_mini_t2i, metric="fid", headline="FID", metric_builder=mini_t2i_metric,
        variant=MINI_T2I_VARIANT,
        generation={"seed": 0}, generation_by_family={"lavit": {**LAVIT_MINI_T2I, "seed": 0}},
    )  # fmt: skip


@register_task
def mini_knowledge() -> TaskSpec:
    return TaskSpec(
        name="mini_knowledge", version=1, kind="lm_eval", split="test",
        description="mini world: MMLU-format multiple choice about its facts, 5-shot through lm-eval, accuracy",
        files=("knowledge/dev/", "knowledge/test/"), layout="mini-world root: " + MMLU_LAYOUT.format(root="knowledge/"),
        metric="mmlu_accuracy", headline="accuracy",
        lm_eval={"data": "knowledge", "num_fewshot": 5, "known_subjects_only": False},
    )  # fmt: skip


def spec_as_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec as plain data (functions by their qualified names), e.g. for results.json."""
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        out[f.name] = f"{value.__module__}:{value.__qualname__}" if callable(value) else value
    return json.loads(json.dumps(out, default=str))


# =============================================================================================
# VILA Table 5's other benchmarks (readers and scorers in eval/vlm_benchmarks.py and eval/judge.py).


@register_task
def scienceqa_img() -> TaskSpec:
    return instruction_spec(
        LETTER_ANSWER, vila=VILA_GREEDY_LONG,
        name="scienceqa_img", version=1, split="test",
        description="ScienceQA test, questions with an image (SQA-I, 2,017), option-letter accuracy (VILA Table 5: 68.2 / 73.7)",
        files=(B.SCIENCEQA_PROBLEMS, B.SCIENCEQA_IMAGES),
        layout=f"{B.SCIENCEQA_PROBLEMS} (official ScienceQA problems) + {B.SCIENCEQA_IMAGES}<pid>/<image>",
        reader=B.read_scienceqa_img, metric="choice_accuracy",
    )  # fmt: skip


@register_task
def pope() -> TaskSpec:
    return instruction_spec(
        SHORT_ANSWER,
        name="pope", version=1, split="random+popular+adversarial",
        description="POPE (COCO val2014, 3 x 3,000 questions): accuracy / precision / recall / F1 per split, F1 averaged (VILA Table 5: 85.5 / 84.2)",
        files=tuple(B.pope_file(s) for s in B.POPE_SPLITS) + (COCO_IMAGES + "val2014/",),
        layout=f"pope/coco_pope_<split>.json (official POPE JSON lines) + {COCO_IMAGES}val2014/<image>",
        reader=B.read_pope, metric="pope", headline="F1",
    )  # fmt: skip


@register_task
def mme() -> TaskSpec:
    return instruction_spec(
        SHORT_ANSWER,
        name="mme", version=1, split="all",
        description="MME: perception score (sum of acc + acc+ over 10 subtasks, max 2000) and cognition score (VILA Table 5: 1533.0 / 1570.1)",
        files=(B.MME_ROOT + "/",),
        layout=f"{B.MME_ROOT}/<subtask>/ (official release: <name>.txt + <name>.jpg|png, or questions_answers_YN/ + images/)",
        reader=B.read_mme, metric="mme", headline="perception",
    )  # fmt: skip


@register_task
def mmbench_dev() -> TaskSpec:
    return instruction_spec(
        LETTER_ANSWER,
        name="mmbench_dev", version=1, split="dev",
        description="MMBench dev (English), circular evaluation accuracy (VILA Table 5 reports test: 68.9 / 70.3)",
        files=(B.MMBENCH_DEV,), layout=f"{B.MMBENCH_DEV} (official TSV with answers, images as base64)",
        reader=B.mmbench_reader(B.MMBENCH_DEV), metric="circular_accuracy", headline="circular_accuracy",
    )  # fmt: skip


@register_task
def mmbench_cn_dev() -> TaskSpec:
    return instruction_spec(
        LETTER_ANSWER_CN,
        name="mmbench_cn_dev", version=1, split="dev",
        description="MMBench-CN dev (Chinese), circular evaluation accuracy (VILA Table 5 reports test: 61.7 / 64.3)",
        files=(B.MMBENCH_CN_DEV,), layout=f"{B.MMBENCH_CN_DEV} (official TSV with answers, images as base64)",
        reader=B.mmbench_reader(B.MMBENCH_CN_DEV), metric="circular_accuracy", headline="circular_accuracy",
    )  # fmt: skip


@register_task
def seed_bench_img() -> TaskSpec:
    return instruction_spec(
        LETTER_ANSWER,
        name="seed_bench_img", version=1, split="test",
        description="SEED-Bench image questions (dimensions 1-9, 14,233), accuracy overall and per dimension (VILA Table 5: 61.1 / 62.8)",
        files=(B.SEED_JSON, B.SEED_IMAGES),
        layout=f"{B.SEED_JSON} (official questions) + {B.SEED_IMAGES}<data_id>",
        reader=B.read_seed_bench_img, metric="choice_accuracy",
    )  # fmt: skip


@register_task
def llava_bench() -> TaskSpec:
    return instruction_spec(
        "{text}", vila=VILA_GREEDY_LONG,
        name="llava_bench", version=1, split="in-the-wild",
        description="LLaVA-Bench (In-the-Wild), 60 questions: GPT-4-judged relative score (needs a judge; VILA Table 5: 69.7 / 73.0)",
        files=(J.LLAVA_BENCH_QUESTIONS, J.LLAVA_BENCH_ANSWERS, J.LLAVA_BENCH_CONTEXT, J.LLAVA_BENCH_IMAGES),
        layout="llava_bench/{questions,answers_gpt4,context}.jsonl + llava_bench/images/<image> (official release)",
        reader=J.read_llava_bench, metric="needs_judge", headline="relative_score", judge="llava_bench",
    )  # fmt: skip


@register_task
def mm_vet() -> TaskSpec:
    return instruction_spec(
        "{text}", vila=VILA_GREEDY_LONG,
        name="mm_vet", version=1, split="all",
        description="MM-Vet, 218 questions: GPT-4-graded score (needs a judge; VILA Table 5: 34.9 / 38.8)",
        files=(J.MM_VET_JSON, J.MM_VET_IMAGES), layout=f"{J.MM_VET_JSON} (official) + {J.MM_VET_IMAGES}<imagename>",
        reader=J.read_mm_vet, metric="needs_judge", headline="score", judge="mm_vet",
    )  # fmt: skip


# =============================================================================================
# In-context versions of six tasks above (eval/fewshot.py builds them): the 0-shot task's test reader and files, with
# k demonstrations drawn from its benchmark's train split. Decoding: greedy by default; LaVIT: its released text
# decoding (the question goes into the demonstration template, so the question-processing keys are left out);
# VILA: greedy with OpenFlamingo's generation lengths (eval/fewshot.py).


def _textvqa_pool(data_root: Path) -> list[fewshot.Demo]:
    return [fewshot.Demo(s.image, s.text, tuple(s.references)) for s in textvqa_samples(data_root / fewshot.TEXTVQA_TRAIN)]


FEWSHOT_POOLS: dict[str, fewshot.Pool] = {
    # benchmark -> (pool reader, the train-split files it needs)
    "coco": (lambda r: fewshot.karpathy_pool(r, COCO_KARPATHY, ("train", "restval")), (COCO_KARPATHY,)),
    "flickr30k": (lambda r: fewshot.karpathy_pool(r, FLICKR_KARPATHY, ("train",)), (FLICKR_KARPATHY,)),
    "okvqa": (lambda r: fewshot.vqa_pool(r, fewshot.OKVQA_TRAIN_QUESTIONS, fewshot.OKVQA_TRAIN_ANNOTATIONS, fewshot.coco_train2014_name),
              (fewshot.OKVQA_TRAIN_QUESTIONS, fewshot.OKVQA_TRAIN_ANNOTATIONS)),
    "textvqa": (_textvqa_pool, (fewshot.TEXTVQA_TRAIN,)),
    "mini_caption": (lambda r: fewshot.karpathy_pool(r, fewshot.MINI_CAPTIONS_TRAIN, ("train",)),
                     (fewshot.MINI_CAPTIONS_TRAIN, fewshot.MINI_TRAIN_IMAGES)),
    "mini_vqa": (lambda r: fewshot.vqa_pool(r, fewshot.MINI_VQA_TRAIN_QUESTIONS, fewshot.MINI_VQA_TRAIN_ANNOTATIONS,
                                            lambda i: f"{fewshot.MINI_TRAIN_IMAGES}{i}.png"),
                 (fewshot.MINI_VQA_TRAIN_QUESTIONS, fewshot.MINI_VQA_TRAIN_ANNOTATIONS, fewshot.MINI_TRAIN_IMAGES)),
}  # fmt: skip
FEWSHOT_TASKS = (
    # (base task, benchmark pool, caption?, description, LaVIT's decoding)
    ("okvqa_val", "okvqa", False, "OK-VQA val, VQA accuracy", LAVIT_VQA),
    ("textvqa_val", "textvqa", False, "TextVQA val, VQA accuracy", LAVIT_VQA),
    ("coco_karpathy_test", "coco", True, "COCO Karpathy test, CIDEr", LAVIT_CAPTION),
    ("flickr30k_test", "flickr30k", True, "Flickr30k Karpathy test, CIDEr", LAVIT_CAPTION),
    ("mini_vqa", "mini_vqa", False, "mini world VQA, VQA accuracy", LAVIT_MINI_VQA),
    ("mini_caption", "mini_caption", True, "mini world captions, CIDEr", LAVIT_MINI_CAPTION),
)


# The mini world's few-shot tasks ask in its own words (eval/fewshot.py MINI_VQA_TEMPLATE says why); version 2: the
# template changed from OpenFlamingo's.
MINI_FEWSHOT_TEMPLATES = {"mini_vqa": fewshot.MINI_VQA_TEMPLATE, "mini_caption": fewshot.MINI_CAPTION_TEMPLATE}


def _register_fewshot() -> None:
    for base, benchmark, caption, description, lavit in FEWSHOT_TASKS:
        for k, shuffled in ((0, False), (4, False), (4, True)):  # + the 4-shot shuffled-answers control
            register_task(lambda b=base, k=k, s=shuffled, bm=benchmark, c=caption, d=description, lv=lavit: fewshot.fewshot_spec(
                get_task(b), k, FEWSHOT_POOLS[bm], caption=c, description=d, greedy=GREEDY_CAPTION if c else GREEDY_VQA,
                lavit={key: v for key, v in lv.items() if key not in fewshot.QUESTION_KEYS}, shuffle_answers=s,
                template=MINI_FEWSHOT_TEMPLATES.get(b), version=2 if b in MINI_FEWSHOT_TEMPLATES else 1))  # fmt: skip


_register_fewshot()


# =============================================================================================
# VILA Table 6's text-only BBH and DROP, and the mini world's fact recall, through lm-eval (eval/text_benchmarks.py builds them).

register_task(text_benchmarks.bbh_spec)
register_task(text_benchmarks.drop_spec)
register_task(text_benchmarks.recall_spec)
