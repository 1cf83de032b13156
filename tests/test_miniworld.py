"""The mini world: a reduced build (200 train / 50 test images) read back by the project's own readers."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import time
from collections import Counter
from pathlib import Path

import easy_vqa
import pytest

from eval.baselines import answer_prior_accuracy, chance_caption_scores
from eval.datasets import read_karpathy_captions, read_vqa_official
from eval.mmlu import list_subjects, read_subject_csv
from harness.miniworld import (
    CAPTIONS_PER_IMAGE,
    COLORS,
    QA_PER_IMAGE,
    SHAPES,
    build_miniworld,
    main,
    pixel_labels,
    question_labels,
    question_type,
    yes_no_answer,
)
from train.data import ImageTextShards, JsonlText

SIZE = {"train_images": 200, "test_images": 50}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_miniworld(tmp_path_factory.mktemp("mw") / "world", seed=0, **SIZE)


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_a_second_build_returns_the_world_already_there_and_other_parameters_are_refused(world):
    marker_time = (world.root / "DONE").stat().st_mtime_ns
    start = time.perf_counter()
    again = build_miniworld(world.root, seed=0, **SIZE)
    assert time.perf_counter() - start < 1.0
    assert (world.root / "DONE").stat().st_mtime_ns == marker_time
    assert again.counts == world.counts
    with pytest.raises(ValueError, match=r"'seed': 0.*'seed': 1"):
        build_miniworld(world.root, seed=1, **SIZE)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(world, tmp_path):
    same = build_miniworld(tmp_path / "same", seed=0, **SIZE)
    other = build_miniworld(tmp_path / "other", seed=1, **SIZE)
    assert tree_hash(same.root) == tree_hash(world.root)
    assert tree_hash(other.root / "shards") != tree_hash(world.root / "shards")
    assert tree_hash(other.root / "text") != tree_hash(world.root / "text")


def test_the_shard_reader_reads_every_sample_once_per_epoch(world):
    n = world.counts["train_samples"]
    assert n == 200 * (CAPTIONS_PER_IMAGE + QA_PER_IMAGE) and world.counts["train_images"] == 200
    stream = ImageTextShards([world.shards], seed=3)
    samples = [next(stream) for _ in range(n)]
    assert len({s.key for s in samples}) == n and stream.stats() == {}
    assert next(stream).key in {s.key for s in samples}  # the next epoch starts over
    kinds = Counter(s.meta["kind"] for s in samples)
    assert kinds == {"caption": 200 * CAPTIONS_PER_IMAGE, "vqa": 200 * QA_PER_IMAGE}
    per_image = Counter(s.meta["image_id"] for s in samples)
    assert set(per_image.values()) == {CAPTIONS_PER_IMAGE + QA_PER_IMAGE}
    for s in samples:
        shape, color = world.labels["train"][str(s.meta["image_id"])]
        assert (s.meta["shape"], s.meta["color"]) == (shape, color) and s.image.size == (64, 64)
        if s.meta["kind"] == "caption":
            assert shape in s.text and color in s.text
        else:
            assert s.text == f"Question: {s.meta['question']} Answer: {s.meta['answer']}"


def test_no_test_image_or_test_question_pair_is_in_the_training_shards(world):
    test_pngs = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in easy_vqa.get_test_image_paths().values()}
    train_ids = set(range(4000))
    train_pairs = set(zip(*easy_vqa.get_train_questions()))
    seen = 0
    for shard in world.shard_files:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith(".png"):
                    assert hashlib.sha256(data).hexdigest() not in test_pngs, member.name
                    seen += 1
                elif member.name.endswith(".json"):
                    meta = json.loads(data)
                    assert meta["split"] == "train" and meta["image_id"] in train_ids
                    if meta["kind"] == "vqa":
                        assert (meta["question"], meta["answer"], meta["image_id"]) in train_pairs
    assert seen == world.counts["train_samples"]


def test_eval_files_are_read_by_the_benchmark_readers(world):
    refs = read_karpathy_captions(world.captions_file)
    assert len(refs.refs) == 50 and all(len(r) == 5 for r in refs.refs.values())
    karpathy = json.loads(world.captions_file.read_text())["images"]
    for image in karpathy:
        assert (world.image_root / image["filepath"] / image["filename"]).is_file()
        shape, color = world.labels["test"][str(image["imgid"])]
        assert all(shape in s["raw"] and color in s["raw"] for s in image["sentences"])
    vqa = read_vqa_official(world.vqa_questions_file, world.vqa_annotations_file)
    assert len(vqa.questions) == world.counts["test_questions"] > 400
    assert all(len(q.answers) == 10 and len(set(q.answers)) == 1 for q in vqa.questions)
    assert {q.answer_type for q in vqa.questions} == {"yes/no", "other"}
    for q in json.loads(world.vqa_questions_file.read_text())["questions"]:
        assert (world.test_image_dir / f"{q['image_id']}.png").is_file()


def test_knowledge_benchmark_parses_with_balanced_answers_and_other_entities_as_distractors(world):
    assert list_subjects(world.knowledge_dir) == world.knowledge_subjects and len(world.knowledge_subjects) == 3
    facts = [json.loads(line) for line in (world.knowledge_dir / "facts.jsonl").read_text().splitlines()]
    by_question = {f["question"]: f for f in facts}
    for subject in world.knowledge_subjects:
        dev = read_subject_csv(world.knowledge_dir / "dev" / f"{subject}_dev.csv")
        test = read_subject_csv(world.knowledge_dir / "test" / f"{subject}_test.csv")
        assert len(dev) == 5 and len(test) >= 20
        positions = Counter(d["answer"] for d in dev + test)
        assert max(positions.values()) - min(positions.values()) <= 1 and len(positions) == 4
        for doc in dev + test:
            fact = by_question[doc["question"]]
            assert doc["choices"][doc["answer"]] == fact["value"] and len(set(doc["choices"])) == 4
            values = {f["value"] for f in facts if f["attribute"] == fact["attribute"]}
            assert all(c in values for c in doc["choices"]) or len(values) < 4  # other entities' values


def test_every_fact_asked_is_stated_in_the_corpus_in_several_phrasings(world):
    facts = [json.loads(line) for line in (world.knowledge_dir / "facts.jsonl").read_text().splitlines()]
    assert 60 <= len(facts) <= 100
    docs = [json.loads(line)["text"] for line in world.text_sources["facts"][0].read_text().splitlines()]
    sentences = [s.lower() for doc in docs for s in re.split(r"(?<=\.) ", doc)]
    for fact in facts:
        stating = {s for s in sentences if fact["entity"].lower() in s and fact["value"].lower() in s}
        assert len(stating) >= 3, fact


def test_every_text_source_is_read_by_the_jsonl_reader(world):
    assert set(world.text_sources) == {"shapes", "qa", "facts", "filler"}
    total = 0
    for name, files in world.text_sources.items():
        n = world.counts[f"docs_{name}"]
        stream = JsonlText([str(f) for f in files], seed=0)
        docs = [next(stream) for _ in range(n)]
        assert stream.stats() == {} and all(docs)
        if name == "qa":
            assert all(re.search(r"Question: .+\? Answer: \w+$", d) for d in docs)
        total += n
    assert 6000 <= total <= 9000


def test_a_qa_document_asks_one_to_four_questions_about_its_scene_and_answers_each_rightly(world):
    """The "qa" source's answers are the scene's: a yes/no one by `yes_no_answer`, an open one the scene's colour,
    shape or corner count; 1-4 questions per document, each count present."""
    corners = {"circle": "none", "rectangle": "four", "triangle": "three"}
    (path,) = world.text_sources["qa"]
    counts = Counter()
    for line in Path(path).read_text().splitlines():
        scene, *asked = json.loads(line)["text"].split(" Question: ")
        (color, shape), = [(w, v) for w, v in zip(scene.split(), scene.split()[1:]) if w in COLORS and v.rstrip(".") in SHAPES]
        shape = shape.rstrip(".")
        counts[len(asked)] += 1
        for qa in asked:
            q, _, a = qa.removesuffix(".").partition(" Answer: ")
            expected = yes_no_answer(q, shape, color) or (corners[shape] if "corners" in q else color if "color" in q else shape)
            assert a == expected, (scene, q, a)
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 0.2 * sum(counts.values())


def test_labels_from_questions_agree_with_labels_from_pixels():
    paths = easy_vqa.get_train_image_paths()
    known = question_labels(zip(*easy_vqa.get_train_questions()))
    assert known[0] == {"shape": "rectangle", "color": "blue"}  # "what is the blue shape?" -> "rectangle"
    settled = [i for i in sorted(known) if len(known[i]) == 2][:300]
    agree = sum(pixel_labels(paths[i]) == known[i] for i in settled)
    assert agree >= 0.99 * len(settled)


def test_blind_baselines_and_caption_attribute_hits(world):
    assert question_type("What color is the circle?") == "what color is the"
    assert question_type("is there not a red shape in the image?") == "is there not a"
    assert world.prior_answer("what color is the shape?") in world.answers
    assert world.prior_answer("what shape is in the image?") in SHAPES
    assert world.prior_answer("is there not a blue shape?") == "yes"  # most colours are absent
    test_id, (shape, color) = next(iter(world.labels["test"].items()))
    other_shape = next(s for s in SHAPES if s != shape)
    assert world.caption_attribute_hits(f"A {color.upper()} {shape}s on white.", test_id) == (True, True)
    assert world.caption_attribute_hits(f"a {shape} or a {other_shape}", int(test_id)) == (False, False)
    rates = world.chance_rates()
    assert 0.3 < rates["shape"] <= rates["shape_majority"] < 0.5
    assert 0.1 < rates["color"] <= rates["color_majority"] < 0.2


def test_cli_builds_and_rejects_bad_counts(tmp_path, capsys):
    assert main(["--root", str(tmp_path / "w"), "--train-images", "20", "--test-images", "5"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"train_samples\s+{20 * (CAPTIONS_PER_IMAGE + QA_PER_IMAGE)}\b", out) and "size shards/" in out
    assert main(["--root", str(tmp_path / "bad"), "--test-images", "5000"]) == 2
    assert capsys.readouterr().err.startswith("error: --test-images must be in 1..1000")
    assert main(["--root", str(tmp_path / "w"), "--seed", "4", "--train-images", "20", "--test-images", "5"]) == 2


def test_answer_prior_accuracy_scores_the_prior_answers_with_the_vqa_metric(world):
    questions = json.loads(world.vqa_questions_file.read_text())["questions"][:100]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads(world.vqa_annotations_file.read_text())["annotations"]}
    # Every question has 10 identical answers, so its VQA accuracy is 100 or 0.
    expected = 100 * sum(world.prior_answer(q["question"]) == answers[q["question_id"]] for q in questions) / 100
    assert answer_prior_accuracy(world, world.root, limit=100) == pytest.approx(expected)
    assert 100 / len(world.answers) < expected < 90


def test_caption_hit_rate_reads_runner_predictions(world, tmp_path):
    from eval.baselines import caption_hit_rate

    ids = list(world.labels["test"])[:4]
    (s0, c0), (s1, c1) = world.labels["test"][ids[0]], world.labels["test"][ids[1]]
    wrong_color = next(c for c in ("red", "blue") if c != c1)
    lines = [{"header": {"format": 1}}, {"id": int(ids[0]), "prediction": f"a {c0} {s0}."},
             {"id": int(ids[1]), "prediction": f"a {wrong_color} {s1}."}, {"id": int(ids[2]), "prediction": "a thing."},
             {"id": int(ids[3]), "skipped": "corrupt_image"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert caption_hit_rate(world, path, "shape") == pytest.approx(2 / 3)
    assert caption_hit_rate(world, path, "color") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="attribute"):
        caption_hit_rate(world, path, "size")


def test_chance_captions_name_attributes_at_about_the_chance_rate(world):
    scores = chance_caption_scores(world, world.root, limit=50)
    assert scores == chance_caption_scores(world, world.root, limit=50)  # seeded
    assert scores["shape"] < 0.7 and scores["color"] < 0.4 and 0 < scores["CIDEr"] < 10


def test_fewshot_pool_holds_train_images_only_and_is_added_to_an_older_world(world):
    from eval.tasks import get_task
    from harness.miniworld import FEWSHOT_POOL_FILES, write_fewshot_pool

    train = read_karpathy_captions(world.root / "eval/captions_train.json", "train")
    assert len(train.refs) == 200  # easy-VQA numbers its train and test images separately: compare the bytes
    train_paths = easy_vqa.get_train_image_paths()
    assert all((world.root / f"images/train/{i}.png").read_bytes() == Path(train_paths[int(i)]).read_bytes() for i in train.refs)
    assert read_vqa_official(world.root / "eval/vqa_train_questions.json", world.root / "eval/vqa_train_annotations.json").questions
    samples, root = get_task("mini_vqa_4shot").read(world.root, limit=3)
    assert len(samples) == 9 and all(len(s.shots) == 4 and (root / s.shots[0][0]).is_file() for s in samples)
    # a world built before the pool existed: the next build_miniworld call adds it and changes nothing else
    before = tree_hash(world.root / "eval")
    for name in FEWSHOT_POOL_FILES:
        (world.root / name).unlink()
    build_miniworld(world.root, seed=0, **SIZE)
    assert tree_hash(world.root / "eval") == before
    assert write_fewshot_pool(world.root) == 0  # already there: nothing written


def test_question_prior_is_the_majority_answer_of_each_question_string_and_at_least_the_type_prior(world):
    from eval.baselines import vqa_accuracy
    from harness.miniworld import question_majority_answers

    majority = question_majority_answers(world)
    train_ids = {int(i) for i in world.labels["train"]}
    asked = [(q, a) for q, a, i in zip(*easy_vqa.get_train_questions()) if i in train_ids]
    question, _ = Counter(q for q, _ in asked).most_common(1)[0]
    assert majority[question] == Counter(a for q, a in asked if q == question).most_common(1)[0][0]
    questions = json.loads(world.vqa_questions_file.read_text())["questions"][:150]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads(world.vqa_annotations_file.read_text())["annotations"]}
    # Every question has 10 identical answers (VQA accuracy 100 or 0); unseen strings fall back to the type's prior.
    expected = 100 * sum((majority.get(q["question"]) or world.prior_answer(q["question"])) == answers[q["question_id"]]
                         for q in questions) / len(questions)
    assert vqa_accuracy(world, world.root, limit=150, blind="question") == pytest.approx(expected)
    with pytest.raises(Exception, match="blind must be one of"):
        vqa_accuracy(world, world.root, limit=10, blind="oracle")


def test_image_shuffle_moves_every_question_to_another_image_deterministically(world):
    from eval.tasks import get_task

    plain, _ = get_task("mini_vqa").read(world.root, 150)
    shuffled, _ = get_task("mini_vqa_image_shuffle").read(world.root, 150)
    again, _ = get_task("mini_vqa_image_shuffle").read(world.root, 150)
    assert [s.id for s in shuffled] == [s.id for s in plain] and [s.text for s in shuffled] == [s.text for s in plain]
    assert all(a.image != b.image for a, b in zip(plain, shuffled))  # a derangement of the images
    assert sorted({s.image for s in shuffled}) == sorted({s.image for s in plain})
    assert [s.image for s in again] == [s.image for s in shuffled]
    # Questions about one image all move to the same other image (the picture is replaced, not scrambled per question).
    moved = {}
    for a, b in zip(plain, shuffled):
        assert moved.setdefault(a.image, b.image) == b.image


# ----- the knowledge recall task (eval/text_benchmarks.py) over this world ----------------------


def _fact_statements(world) -> set[str]:
    sentences = set()
    for line in (Path(world.root) / "text" / "facts.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        sentences.update(s.strip() + "." for s in text.split(".") if s.strip())
    return sentences


def test_recall_docs_complete_the_corpus_own_statements(world):
    from eval.text_benchmarks import read_recall

    docs = read_recall(Path(world.root))
    assert len(docs) == world.counts["knowledge_test_questions"]
    statements = _fact_statements(world)
    for doc in docs:
        completions = [f"{doc['context']} {choice}." for choice in doc["choices"]]
        assert completions[doc["gold"]] in statements  # the true value completes a sentence the LLM trained on
        assert not any(c in statements for i, c in enumerate(completions) if i != doc["gold"])


class _OracleLM:
    """An lm-eval LM that knows the corpus: loglikelihood 0 for a completion that is a corpus sentence, else -10
    (or the reverse, `liar=True`)."""

    def __new__(cls, statements: set[str], liar: bool = False):
        from lm_eval.api.model import LM

        class Oracle(LM):
            def loglikelihood(self, requests):
                out = []
                for r in requests:
                    known = (r.args[0] + r.args[1] + ".") in statements
                    out.append((0.0 if known != liar else -10.0, known != liar))
                return out

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                raise NotImplementedError

        return Oracle()


def test_recall_through_lm_eval_scores_what_the_lm_knows(world):
    from eval.text_benchmarks import evaluate

    statements = _fact_statements(world)
    values, counts = evaluate(_OracleLM(statements), "recall", Path(world.root))
    assert values == {"accuracy": 100.0} and counts["accuracy"] == world.counts["knowledge_test_questions"]
    values, _ = evaluate(_OracleLM(statements, liar=True), "recall", Path(world.root))
    assert values["accuracy"] == 0.0


# ----- the scene-QA competence measure (reproduce/competence.py) over this world ----------------


def _scene_oracle(prefix: str, continuation: str) -> float:
    """Knows the scene: 1 for the true answer to the question about the scene the prefix describes in words."""
    from harness.miniworld import COLORS, SHAPES

    scene, question = prefix.split(" Question: ")
    words = scene.rstrip(".").split()
    color, shape = next(w for w in words if w in COLORS), next(w for w in words if w in SHAPES)
    asked = question.removesuffix(" Answer:").rstrip("?").split()
    answer = continuation.strip()
    if answer in ("yes", "no"):
        thing = next(w for w in asked if w in COLORS or w in SHAPES)
        return float((answer == "yes") == ((thing in (color, shape)) != ("not" in asked or "no" in asked)))
    if "corners" in asked:
        return float(answer == {"circle": "none", "rectangle": "four", "triangle": "three"}[shape])
    return float(answer == (color if "color" in asked else shape))


def test_scene_qa_scores_an_oracle_full_marks_and_a_constant_answer_at_its_base_rate(world):
    from reproduce.competence import scene_qa_accuracy

    assert scene_qa_accuracy(_scene_oracle, world, n=200) == {"yes/no": 100.0, "open": 100.0}
    always_yes = scene_qa_accuracy(lambda prefix, continuation: float(continuation == " yes"), world, n=200)
    assert 35.0 < always_yes["yes/no"] < 65.0  # the share of "yes" answers: the corpus asks both ways
    assert always_yes["open"] < 40.0  # a constant guess among colours / shapes / corner counts


def test_lm_scorer_asks_the_lm_for_the_continuations_loglikelihood():
    from reproduce.competence import lm_scorer

    class LM:  # an lm-eval LM: loglikelihood(requests) -> [(log-probability, is greedy)]
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(-float(len(r.args[1])), False) for r in requests]

    score = lm_scorer(LM())
    assert score("Answer:", " yes") == -4.0 and score("Answer:", " no") == -3.0


def test_qa_document_parts_invert_the_corpus_writer(world):
    """Every "qa" document of the world's corpus is its scene and its (question, answer) pairs, written back the
    corpus' way; every answer is the scene's (the readers of these documents rely on both)."""
    import json
    import re

    from harness.miniworld import VQA_PROMPT, qa_document_parts

    docs = [json.loads(line)["text"] for line in (world.root / "text" / "qa.jsonl").read_text().splitlines()]
    for doc in docs:
        scene, pairs = qa_document_parts(doc)
        assert 1 <= len(pairs) <= 4
        assert doc == scene + " " + ". ".join(VQA_PROMPT.format(q=q, a=a) for q, a in pairs)
        color, shape = re.search(r"\b(" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")\b", scene).groups()
        for q, a in pairs:
            if "corners" not in q:  # the corner counts are the shapes' facts, not the scene's
                assert a == (yes_no_answer(q, shape, color) or (color if "color" in q else shape)), (doc, q)
