"""BBH and DROP (VILA Table 6's text-only columns), and the mini world's fact recall, through lm-eval, from local files.

    bbh    BIG-Bench Hard, 27 tasks, 3-shot answer-only: the description, then the three exemplars of the task's
           official CoT prompt file with their final answers ("So the answer is X." -> "X") as "Q: ...\\nA: X", then
           "Q: <input>\\nA:"; greedy until "</s>" / "Q" / a blank line (lm-eval's bbh_fewshot protocol); exact match
           after stripping. Reported: "accuracy" (macro average over the tasks present) and "accuracy/<task>".
    drop   DROP dev, 3-shot (demonstrations drawn from the train file with lm-eval's seeded sampler), "{passage}
           {question}", greedy until "."; EM and F1 of lm-eval's DROP scorer (`lm_eval.tasks.drop.utils`), in percent.

    mini_knowledge_recall   the mini world's knowledge test facts as sentence completions, 0-shot: the context is
           the start of the fact's statement in the corpus' own words ("The capital of Glabeshand is"), the choices are
           the four options of the fact's MMLU-format test question (" Zhalnosh", ...), scored by loglikelihood
           (lm-eval multiple_choice, `acc`). It asks whether the LLM holds the fact, apart from whether it can bind an
           answer to a letter (`mini_knowledge`, the MMLU format; a 2-layer mini LLM cannot, see
           `reproduce/mini_release.py`).

All run lm-eval's `simple_evaluate` on the family's text-only LM (`LoadedModel.llm`) with tasks built here as
lm-eval `ConfigurableTask`s over the local files (nothing is downloaded). Files (official releases):

    bbh/bbh/<task>.json ({"examples": [{"input", "target"}]}) + bbh/cot-prompts/<task>.txt   (suzgunmirac/BIG-Bench-Hard)
    drop/drop_dataset_dev.json + drop/drop_dataset_train.json   ({passage id: {passage, qa_pairs: [{question, answer,
        query_id, validated_answers}]}}, the drop_dataset.zip release)

A missing file is a `TaskDataError` naming it, raised by `python -m eval` before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from eval.errors import EvalInputError
from eval.registry import TaskSpec

BBH_DATA = "bbh/bbh/"
RECALL_FACTS = "knowledge/facts.jsonl"
RECALL_TESTS = "knowledge/test/"
BBH_PROMPTS = "bbh/cot-prompts/"
DROP_DEV = "drop/drop_dataset_dev.json"
DROP_TRAIN = "drop/drop_dataset_train.json"


# =============================================================================================
# BBH


def bbh_task_names(data_root: Path) -> list[str]:
    """Tasks with both a data file and a prompt file; a data file without its prompt file is an error naming it."""
    names = sorted(p.stem for p in (data_root / BBH_DATA).glob("*.json"))
    if not names:
        raise EvalInputError("no <task>.json files", data_root / BBH_DATA)
    for name in names:
        if not (data_root / BBH_PROMPTS / f"{name}.txt").is_file():
            raise EvalInputError(f"BBH task {name} has no prompt file {BBH_PROMPTS}{name}.txt", data_root / BBH_PROMPTS)
    return names


def read_bbh_prompt(path: Path) -> tuple[str, list[dict[str, str]]]:
    """(description, exemplars [{"input", "target"}]) of a CoT prompt file; each exemplar's target is its final answer."""
    text = path.read_text(encoding="utf-8")
    head, *chunks = re.split(r"\n\s*\n(?=Q: )", text.strip())
    description = "\n".join(line for line in head.splitlines() if line.strip() and set(line.strip()) != {"-"})
    exemplars = []
    for chunk in chunks:
        question, sep, reasoning = chunk[len("Q: ") :].partition("\nA: ")
        answer = re.search(r"So the answer is (.+?)\.?\s*$", reasoning.strip())
        if not sep or answer is None:
            raise EvalInputError(f"exemplar {len(exemplars) + 1} is not 'Q: ...\\nA: ... So the answer is X.'", path)
        exemplars.append({"input": question.strip(), "target": answer.group(1).strip()})
    if not exemplars:
        raise EvalInputError("no 'Q: ... A: ...' exemplars", path)
    return description, exemplars


def read_bbh_examples(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(f"not valid JSON ({err.msg})", path) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise EvalInputError("expected {'examples': [{'input', 'target'}, ...]}", path)
    return [{"input": str(e["input"]), "target": str(e["target"])} for e in examples]


def _exact_match(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": float(results[0].strip() == doc["target"].strip())}


def bbh_task(data_root: Path, name: str):
    """One BBH task as an lm-eval ConfigurableTask over the local files."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    description, exemplars = read_bbh_prompt(data_root / BBH_PROMPTS / f"{name}.txt")
    docs = read_bbh_examples(data_root / BBH_DATA / f"{name}.json")
    return ConfigurableTask(config={
        "task": f"bbh_local_{name}",
        "custom_dataset": lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}),
        "test_split": "test",
        "output_type": "generate_until",
        "description": description + "\n\n",
        "doc_to_text": "Q: {{input}}\nA:",
        "doc_to_target": "{{target}}",
        "fewshot_config": {"sampler": "first_n", "samples": exemplars},
        "num_fewshot": 3,
        "generation_kwargs": {"until": ["</s>", "Q", "\n\n"], "do_sample": False},
        "process_results": _exact_match,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    })  # fmt: skip


# =============================================================================================
# DROP


def read_drop(path: Path) -> list[dict[str, Any]]:
    """The official DROP file as lm-eval DROP docs: id, passage, question, answers (every distinct gold answer as
    a tuple, the answer first, then the validated answers) and target (the first, joined with ",")."""
    from lm_eval.tasks.drop.utils import parse_answer

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(f"not valid JSON ({err.msg})", path) from None
    if not isinstance(data, dict):
        raise EvalInputError("expected {passage id: {passage, qa_pairs}}", path)
    docs = []
    for passage_id, record in data.items():
        for qa in record.get("qa_pairs", []):
            try:
                candidates = [qa["answer"], *qa.get("validated_answers", [])]
                answers = list(dict.fromkeys(tuple(parse_answer(c)) for c in candidates))
            except (KeyError, TypeError) as err:
                raise EvalInputError(f"passage {passage_id}, query {qa.get('query_id')}: malformed answer ({err})", path) from None
            docs.append({"id": qa["query_id"], "passage": record["passage"], "question": qa["question"],
                         "answers": [list(a) for a in answers], "target": ",".join(answers[0])})  # fmt: skip
    if not docs:
        raise EvalInputError("no questions", path)
    return docs


def drop_task(data_root: Path):
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks.drop.utils import process_results

    train, dev = read_drop(data_root / DROP_TRAIN), read_drop(data_root / DROP_DEV)
    return ConfigurableTask(config={
        "task": "drop_local",
        "custom_dataset": lambda **_: datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                                                            "validation": datasets.Dataset.from_list(dev)}),
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "validation",
        "output_type": "generate_until",
        "doc_to_text": "{{passage}} {{question}}",
        "doc_to_target": "{{target}}",
        "target_delimiter": "",
        "num_fewshot": 3,
        "generation_kwargs": {"until": ["."], "do_sample": False},
        "process_results": process_results,
        "metric_list": [{"metric": "em", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "f1", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    })  # fmt: skip


# =============================================================================================
# Mini knowledge recall


def _statement_prefix(fact: dict[str, str]) -> str:
    """The start of the fact's first corpus phrasing that ends in its value ("The capital of {e} is")."""
    from harness.miniworld import ATTRIBUTES

    templates = ATTRIBUTES[fact["kind"]][fact["attribute"]][1]
    template = next(t for t in templates if t.endswith("{v}."))
    text = template[: -len("{v}.")].format(e=fact["entity"]).rstrip()
    return text[0].upper() + text[1:]


def read_recall(data_root: Path) -> list[dict[str, Any]]:
    """One doc per test question of `mini_knowledge`: {id, context, choices, gold} (the question's own four options,
    in its order, so chance is 25% as there)."""
    import csv

    try:
        facts = {f["question"]: f for f in map(json.loads, (data_root / RECALL_FACTS).read_text().splitlines())}
    except (json.JSONDecodeError, KeyError) as err:
        raise EvalInputError(f"not a facts file ({err})", data_root / RECALL_FACTS) from None
    docs = []
    for path in sorted((data_root / RECALL_TESTS).glob("*_test.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                fact = facts.get(row["question"])
                if fact is None:
                    raise EvalInputError(f"row {i + 1}: question {row['question']!r} is not in {RECALL_FACTS}", path)
                docs.append({"id": f"{path.stem}/{i}", "context": _statement_prefix(fact),
                             "choices": [row[f"choice{k}"] for k in range(4)], "gold": int(row["answer"])})  # fmt: skip
    if not docs:
        raise EvalInputError("no test questions", data_root / RECALL_TESTS)
    return docs


def recall_task(data_root: Path):
    import datasets
    from lm_eval.api.task import ConfigurableTask

    docs = read_recall(data_root)
    return ConfigurableTask(config={
        "task": "mini_knowledge_recall_local",
        "custom_dataset": lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}),
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    })  # fmt: skip


# =============================================================================================
# The evaluate.py side: dataset hash before the model loads, result rows after.


def files_hash(spec: Any, data_root: Path) -> str:
    """Checks the task's files (errors name them) and hashes them, before any model is loaded."""
    if spec.lm_eval["benchmark"] == "bbh":
        paths = []
        for name in bbh_task_names(data_root):
            paths += [data_root / BBH_DATA / f"{name}.json", data_root / BBH_PROMPTS / f"{name}.txt"]
    elif spec.lm_eval["benchmark"] == "recall":
        read_recall(data_root)  # every test question has its fact
        paths = [data_root / RECALL_FACTS, *sorted((data_root / RECALL_TESTS).glob("*_test.csv"))]
    else:
        paths = [data_root / DROP_DEV, data_root / DROP_TRAIN]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(data_root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def evaluate(lm: Any, benchmark: str, data_root: Path, limit: int | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Run BBH, DROP or the mini recall on an lm-eval LM: ({metric: percent}, {metric: questions})."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from eval.mmlu import quiet_lm_eval

    if benchmark == "bbh":
        tasks = [bbh_task(data_root, n) for n in bbh_task_names(data_root)]
    elif benchmark == "recall":
        tasks = [recall_task(data_root)]
    else:
        tasks = [drop_task(data_root)]
    with quiet_lm_eval():
        # include_defaults=False: the tasks are built here, and indexing lm-eval's thousands of YAMLs costs ~15 s
        results = simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, bootstrap_iters=0,
                                  fewshot_random_seed=1234, task_manager=TaskManager(include_defaults=False))  # fmt: skip
    values: dict[str, float] = {}
    counts: dict[str, int] = {}
    if benchmark == "bbh":
        for task in tasks:
            name = task.config.task
            short = name[len("bbh_local_") :]
            values[f"accuracy/{short}"] = 100.0 * results["results"][name]["exact_match,none"]
            counts[f"accuracy/{short}"] = len(results["samples"][name])
        per_task = [v for k, v in values.items()]
        values = {"accuracy": sum(per_task) / len(per_task), **values}
        counts = {"accuracy": sum(counts.values()), **counts}
    elif benchmark == "recall":
        name = "mini_knowledge_recall_local"
        values = {"accuracy": 100.0 * results["results"][name]["acc,none"]}
        counts = {"accuracy": len(results["samples"][name])}
    else:
        row = results["results"]["drop_local"]
        n = len(results["samples"]["drop_local"])
        values = {"f1": 100.0 * row["f1,none"], "em": 100.0 * row["em,none"]}
        counts = {"f1": n, "em": n}
    return values, counts


def rows(prepared: Any, loaded: Any, data_root: Path, out_dir: Path, limit: int | None, family: str) -> list[dict]:
    """evaluate.py's rows for a BBH / DROP task (one per metric value, with its own question count)."""
    from eval.lm_adapter import text_lm
    from eval.runner import _model_config_dict, results_rows

    spec = prepared.spec
    values, counts = evaluate(text_lm(loaded), spec.lm_eval["benchmark"], data_root, limit)
    task = spec.eval_task(family)
    config = {"task": dataclasses.asdict(task), "model_id": loaded.model_id, "model_config": _model_config_dict(loaded.config),
              "lm_eval": spec.lm_eval}  # fmt: skip
    out = results_rows(task, values, variant=spec.variant, n_scored=counts[spec.headline], n_missing=0,
                       n_skipped_corrupt=0, dataset_sha256=prepared.dataset_hash, config=config)  # fmt: skip
    for row in out:
        row["n_scored"] = row["n_denominator"] = row["n_total"] = counts[row["metric"]]
    return out


# =============================================================================================
# The task specs (registered by eval/tasks.py)


def bbh_spec() -> TaskSpec:
    return TaskSpec(
        name="bbh", version=1, kind="lm_eval", split="test",
        description="BIG-Bench Hard, 27 tasks, 3-shot answer-only through lm-eval, exact match macro-averaged (VILA Table 6: Llama-2 7B 32.0, VILA-7B 38.5)",
        files=(BBH_DATA, BBH_PROMPTS), layout=f"{BBH_DATA}<task>.json + {BBH_PROMPTS}<task>.txt (suzgunmirac/BIG-Bench-Hard)",
        metric="accuracy", headline="accuracy", variant="lm-eval bbh_fewshot protocol, 3-shot, greedy, exact match",
        lm_eval={"runner": "text_benchmarks", "benchmark": "bbh", "num_fewshot": 3},
    )  # fmt: skip


def drop_spec() -> TaskSpec:
    return TaskSpec(
        name="drop", version=1, kind="lm_eval", split="dev",
        description="DROP dev (9,536 questions), 3-shot through lm-eval, F1 (VILA Table 6: Llama-2 7B 31.7, VILA-7B 52.7)",
        files=(DROP_DEV, DROP_TRAIN), layout=f"{DROP_DEV} + {DROP_TRAIN} (official drop_dataset release)",
        metric="f1", headline="f1", variant="lm-eval drop protocol, 3-shot from train, greedy until '.', F1/EM",
        lm_eval={"runner": "text_benchmarks", "benchmark": "drop", "num_fewshot": 3},
    )  # fmt: skip


def recall_spec() -> TaskSpec:
    return TaskSpec(
        name="mini_knowledge_recall", version=1, kind="lm_eval", split="test",
        description="mini world: each mini_knowledge test fact as a sentence completion in the corpus' words, its "
                    "question's four options scored by loglikelihood, 0-shot through lm-eval, accuracy (chance 25)",
        files=(RECALL_FACTS, RECALL_TESTS), layout=f"mini-world root: {RECALL_FACTS} + {RECALL_TESTS}<subject>_test.csv",
        metric="accuracy", headline="accuracy",
        variant="lm-eval multiple_choice, 0-shot, the statement's start as context, acc (summed loglikelihood)",
        lm_eval={"runner": "text_benchmarks", "benchmark": "recall", "num_fewshot": 0},
    )  # fmt: skip
