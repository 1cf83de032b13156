"""`python -m eval` and the task registry (eval/tasks.py, eval/evaluate.py) on tiny files in the official layouts.

The model is a stand-in family (tests/fixtures_official.py) that reads the fixture images' colours, so its scores
are known exactly: VQA-style tasks 50% on any even prefix, MMLU-format tasks 25% (it always answers A; answers
cycle 0-3).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import fixtures_official as F
from eval import tasks as T
from eval.evaluate import evaluate_tasks, prepare_tasks

REPO = Path(__file__).resolve().parent.parent
LIMIT = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return F.write_all(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def family() -> str:
    return F.register_standin_family()


# ----- the registry ------------------------------------------------------------------------------


EXPECTED_SAMPLES = {  # what each fixture holds for the task's split
    "coco_karpathy_test": 4, "nocaps_val": 6, "flickr30k_test": 4, "vqav2_val": 6, "okvqa_val": 6, "gqa_testdev": 6,
    "vizwiz_val": 6, "coco30k_fid": 6, "mini_caption": 6, "mini_t2i": 6, "mini_vqa": 6, "mini_vqa_image_shuffle": 6, "textvqa_val": 6, "scienceqa_img": 6,
    "pope": 12, "mme": 8, "mmbench_dev": 9, "mmbench_cn_dev": 9, "seed_bench_img": 6, "llava_bench": 3, "mm_vet": 3,
    **{f"{base}_0shot": n for base, n in (("okvqa_val", 6), ("textvqa_val", 6), ("coco_karpathy_test", 4),
                                          ("flickr30k_test", 4), ("mini_vqa", 6), ("mini_caption", 6))},
    **{f"{base}_4shot{control}": 3 * n for base, n in (("okvqa_val", 6), ("textvqa_val", 6), ("coco_karpathy_test", 4),
                                                       ("flickr30k_test", 4), ("mini_vqa", 6), ("mini_caption", 6))
       for control in ("", "_shuffled")},
}  # fmt: skip
# --limit N takes N questions of each POPE split, N images (both questions) of each MME subtask, N MMBench questions
# with all their circular shifts, N queries of an in-context task with each seed
LIMIT_PER_GROUP = {"pope", "mme", "mmbench_dev", "mmbench_cn_dev"} | {f"{b}_4shot{c}" for b in ("okvqa_val", "textvqa_val",
                   "coco_karpathy_test", "flickr30k_test", "mini_vqa", "mini_caption") for c in ("", "_shuffled")}  # fmt: skip
COLOR_QUESTIONS = ("vqav2_val", "okvqa_val", "gqa_testdev", "vizwiz_val", "textvqa_val", "mini_vqa", "mini_vqa_image_shuffle")


@pytest.mark.parametrize("name", list(T.TASKS))
def test_every_task_reads_its_official_fixture(name, tmp_path, monkeypatch):
    monkeypatch.setenv("EVAL_EXTRACT_DIR", str(tmp_path / "extracted"))  # MMBench's embedded images
    F.WRITERS[name](tmp_path)  # only this dataset: the task must not depend on another's files
    spec = T.get_task(name)
    assert spec.missing_files(tmp_path) == []
    (prepared,) = prepare_tasks([spec], tmp_path)  # also checks every image file exists
    if spec.kind == "lm_eval":
        assert prepared.samples == [] and len(prepared.dataset_hash) == 64
        return
    assert len(prepared.samples) == EXPECTED_SAMPLES[name]
    for sample in prepared.samples:
        assert sample.references, sample
        assert (prepared.image_root / sample.image).is_file()
        assert all((prepared.image_root / shot[0]).is_file() for shot in sample.shots)
        if name.removesuffix("_shuffled").removesuffix("_0shot").removesuffix("_4shot") in COLOR_QUESTIONS:
            assert sample.text.startswith("What color")
    (limited,) = prepare_tasks([spec], tmp_path, limit=2)
    if name in LIMIT_PER_GROUP:  # --limit counts questions per split / subtask / seed: an ordered subset
        kept = iter(prepared.samples)
        assert 2 < len(limited.samples) < len(prepared.samples) and all(s in kept for s in limited.samples)
    else:
        assert limited.samples == prepared.samples[:2]


def test_readers_keep_the_datasets_own_ids(data_root):
    coco, _ = T.get_task("coco_karpathy_test").read(data_root)
    assert [s.id for s in coco] == F.COCO_IDS[2:]  # the Karpathy test split only, keyed by cocoid
    flickr, _ = T.get_task("flickr30k_test").read(data_root)
    assert flickr[0].id == 10002456  # the number in the file name
    vizwiz, _ = T.get_task("vizwiz_val").read(data_root)
    assert vizwiz[0].id == "VizWiz_val_00000000.jpg"
    assert len(vizwiz[0].references) == 10


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="registered twice"):
        T.register_task(lambda: T.get_task("mmlu"))
    with pytest.raises(KeyError, match="tasks: coco_karpathy_test, nocaps_val"):
        T.get_task("coco_karpathy")


def test_decoding_lives_in_the_task_with_family_overrides():
    vqa = T.get_task("vqav2_val")
    lavit = vqa.eval_task("lavit")
    assert lavit.prompt == "{text}"  # LaVIT's adapter normalises the raw question and templates it (released)
    assert lavit.generation == {"num_beams": 5, "min_new_tokens": 2, "max_new_tokens": 10, "length_penalty": 0.0,
                                "early_stopping": True, "decoding": "released", "selection": "gumbel", "seed": 0,
                                "question_template": "Question: {} Answer:", "question_processing": "released",
                                "lemmatize": True}  # fmt: skip
    vila = vqa.eval_task("vila")  # VILA's released evaluation: greedy, LLaVA-1.5's short-answer instruction
    assert vila.generation == {"num_beams": 1, "min_new_tokens": 1, "max_new_tokens": 128, "length_penalty": 1.0,
                               "early_stopping": False, "do_sample": False, "conv_template": "vicuna_v1"}  # fmt: skip
    assert vila.prompt == "{text}\nAnswer the question using a single word or phrase."
    assert vqa.eval_task("standin").prompt == "Question: {text} Answer:"  # no override: the task's default (greedy)
    assert vqa.eval_task("standin").generation["num_beams"] == 1
    caption = T.get_task("nocaps_val").eval_task("lavit")
    assert caption.prompt == "" and (caption.generation["num_beams"], caption.generation["max_new_tokens"]) == (2, 36)
    assert T.get_task("mmlu").eval_task("lavit").generation == {}


def test_missing_file_names_task_file_and_layout(tmp_path):
    F.write_vqav2(tmp_path)
    (tmp_path / T.VQAV2_ANNOTATIONS).unlink()
    with pytest.raises(T.TaskDataError, match=r"task vqav2_val expects vqav2/v2_mscoco_val2014_annotations.json under .* \(layout: "):
        T.get_task("vqav2_val").check_files(tmp_path)


# ----- python -m eval ----------------------------------------------------------------------------


def run_cli(args: list[str]) -> int:
    from eval.__main__ import main

    return main(args)


def test_cli_end_to_end_then_resume(data_root, family, tmp_path, capfd, caplog):
    out = tmp_path / "out"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    names = "vqav2_val,gqa_testdev,mini_vqa,mini_caption,mmlu,mini_knowledge"
    argv = [names, "--model", family, "--checkpoint", str(ckpt), "--data-root", str(data_root), "--output-dir", str(out),
            "--limit", str(LIMIT), "--batch-size", "3"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert run_cli(argv) == 0
    printed = capfd.readouterr()
    frame = pd.read_csv(out / "results.csv")
    headline = frame[frame["headline"]].set_index("task")["value"]
    assert headline["vqav2_val"] == headline["gqa_testdev"] == headline["mini_vqa"] == 50.0
    assert headline["mmlu"] == headline["mini_knowledge"] == 25.0
    assert headline["mini_caption"] > 0
    assert set(frame["n_denominator"][frame["task"] == "vqav2_val"]) == {LIMIT}
    assert frame.loc[frame["task"] == "mmlu", "n_denominator"].max() == LIMIT * len(F.MMLU_SUBJECTS)
    for task in names.split(","):
        rows = json.loads((out / task / "results.json").read_text())
        assert {r["limit"] for r in rows} == {LIMIT} and {r["family"] for r in rows} == {family}
        assert all(r["model_id"] == F.ColorModel.model_id and len(r["dataset_hash"]) == 64 for r in rows)
        assert all(json.loads(r["provenance"])["git"] for r in rows)
    assert "vqa_accuracy" in printed.out and "results.csv" in printed.out  # the final table
    # MMLU through lm-eval is quiet: no per-subject warnings, no per-subject bars.
    everything = printed.err + "\n".join(r.getMessage() for r in caplog.records)
    assert "Overwriting default num_fewshot" not in everything
    assert "loglikelihood" in printed.err and "Tokenizing inputs" not in printed.err

    cache = out / "vqav2_val" / "shard-0-of-1.jsonl"
    before = cache.read_bytes(), cache.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eval"):
        assert run_cli(argv) == 0
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(again["value"], frame["value"])
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == before
    reused = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().endswith("reused")]
    assert reused == names.split(",")
    capfd.readouterr()


def test_slurm_job_requeues_a_fresh_copy_of_itself():
    import pickle

    import submitit

    from eval.__main__ import EvalJob

    job = EvalJob({"tasks": ["vqav2_val"], "family": "lavit", "checkpoint": "/ckpt", "data_root": "/data",
                   "output_dir": "/out", "limit": None, "batch_size": 8, "device": "cuda", "progress": False})  # fmt: skip
    again = pickle.loads(pickle.dumps(job))
    delayed = again.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, EvalJob) and delayed.function.kwargs == job.kwargs


def test_library_reuses_finished_tasks_without_model_calls(data_root, family, tmp_path):
    loaded = F.load_standin(str(tmp_path))
    first = evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    assert list(first["reused"]) == [False] and first["value"].iloc[0] == 50.0
    n_calls = len(loaded.adapter.calls)
    assert n_calls == 1 and loaded.adapter.calls[0][2] == T.GREEDY_VQA  # the task's decoding reached the model
    second = evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    assert list(second["reused"]) == [True] and len(loaded.adapter.calls) == n_calls
    # Another task version is not the same evaluation: results.json is not reused and the old cache is refused.
    version = T.get_task("okvqa_val").version
    bumped = dataclasses.replace(T.get_task("okvqa_val"), version=version + 1)
    from eval.cache import CacheError

    with pytest.raises(CacheError, match=f"version: cache has {version}, this run has {version + 1}"):
        evaluate_tasks([bumped], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    # The table machinery owns its run directories: there the changed task starts over instead.
    restarted = evaluate_tasks([bumped], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded, restart_changed=True)
    assert list(restarted["reused"]) == [False] and len(loaded.adapter.calls) == n_calls + 1
    assert list(restarted["task_version"]) == [version + 1] and restarted["value"].iloc[0] == first["value"].iloc[0]
    # So does one killed before it finished (a prediction cache, no results.json) and then changed.
    (tmp_path / "out" / "okvqa_val" / "results.json").unlink()
    again = dataclasses.replace(bumped, version=version + 2)
    with pytest.raises(CacheError, match=f"version: cache has {version + 1}, this run has {version + 2}"):
        evaluate_tasks([again], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    restarted = evaluate_tasks([again], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded, restart_changed=True)
    assert list(restarted["reused"]) == [False] and len(loaded.adapter.calls) == n_calls + 2
    assert list(restarted["task_version"]) == [version + 2] and restarted["value"].iloc[0] == first["value"].iloc[0]


def test_results_made_by_other_code_are_redone_or_reused_marked_stale(data_root, family, tmp_path):
    from harness.runlock import RunLockedError, eval_lock

    loaded = F.load_standin(str(tmp_path))
    evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    code = tmp_path / "out" / "okvqa_val" / "code.json"
    record = json.loads(code.read_text())
    assert "eval/evaluate.py" in record["files"] and not any(f.startswith("reproduce/") for f in record["files"])
    record["files"]["eval/evaluate.py"] = "0" * 16  # as if the evaluation code had changed since
    record["git_revision"] = "feedface00112233"
    code.write_text(json.dumps(record))
    n_calls = len(loaded.adapter.calls)
    reused = evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded, reuse_stale=True)
    assert list(reused["reused"]) == [True] and len(loaded.adapter.calls) == n_calls
    assert reused["stale"].iloc[0].startswith("stale: evaluated at feedface00; changed since: eval/evaluate.py")
    redone = evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded)
    assert list(redone["reused"]) == [False] and "stale" not in redone and len(loaded.adapter.calls) == n_calls + 1
    assert redone["value"].iloc[0] == reused["value"].iloc[0]
    # A task output another live process is evaluating: --no-wait names the owner instead of waiting.
    with eval_lock(tmp_path / "out" / "okvqa_val").held():
        with pytest.raises(RunLockedError, match="evaluation .*okvqa_val is owned by"):
            evaluate_tasks(["okvqa_val"], family, tmp_path, data_root, tmp_path / "out", limit=LIMIT, loaded=loaded, wait=False)


def test_missing_file_is_one_line_and_exit_2_before_loading(tmp_path):
    F.write_vqav2(tmp_path / "data")
    (tmp_path / "data" / T.VQAV2_ANNOTATIONS).unlink()
    (tmp_path / "ckpt").mkdir()  # empty: loading it would fail differently
    result = subprocess.run(
        [sys.executable, "-m", "eval", "mini_vqa,vqav2_val", "--model", "lavit", "--checkpoint", str(tmp_path / "ckpt"),
         "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: task mini_vqa expects eval/vqa_test_questions.json under {tmp_path / 'data'} (layout: ")


def test_unknown_task_lists_the_tasks(tmp_path, capsys):
    from eval.__main__ import run

    sys_argv = sys.argv
    sys.argv = ["python -m eval", "vqa", "--model", "lavit", "--checkpoint", str(tmp_path), "--data-root", str(tmp_path),
                "--output-dir", str(tmp_path)]  # fmt: skip
    try:
        assert run() == 2
    finally:
        sys.argv = sys_argv
    err = capsys.readouterr().err
    assert err.startswith("error: unknown evaluation task 'vqa'; tasks: coco_karpathy_test") and err.count("\n") == 1


# ----- MMLU through lm-eval: one bar, no per-subject chatter --------------------------------------


def test_lm_eval_is_quiet_but_keeps_its_result(data_root, capfd, caplog):
    from eval import mmlu

    def run(quiet: bool):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            _, groups, _ = mmlu.evaluate(F.answer_a_lm(), data_root / "mmlu", limit=LIMIT, quiet=quiet)
        captured = capfd.readouterr()
        return groups, captured.err + "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)

    groups_loud, loud = run(quiet=False)
    assert loud.count("Overwriting default num_fewshot") == len(F.MMLU_SUBJECTS)  # what lm-eval does by itself
    groups_quiet, quiet = run(quiet=True)
    assert "Overwriting" not in quiet
    bars = {line.split(":")[0].strip() for line in quiet.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"loglikelihood"}  # the model's one scoring bar
    pd.testing.assert_frame_equal(groups_loud, groups_quiet)
    assert logging.getLogger("lm_eval").level == logging.NOTSET  # restored


def test_lm_eval_vlm_help_names_adapters_and_local_tasks(capsys, monkeypatch):
    from eval.lm_adapter import main

    monkeypatch.setattr(sys, "argv", ["lm-eval-vlm", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("lavit", "vila", "mmlu_local", "mmlu_local_stem", "abstract_algebra", "--include_path"):
        assert name in out


# ----- COCO-30k FID from the runner's generated images --------------------------------------------


def test_coco30k_fid_metric_pairs_generated_with_real_images(data_root, tmp_path, monkeypatch):
    """The metric resizes both sides to 256 px into the task folder and hands the two folders to eval.fid (its own
    tests cover FID; here a pixel distance between same-named files stands in, to check which files are paired)."""
    import numpy as np
    from PIL import Image

    import eval.fid

    def pixel_distance(real, fake, **_):
        names = sorted(p.name for p in Path(real).glob("*.png"))
        assert names == sorted(p.name for p in Path(fake).glob("*.png")) and len(names) == len(samples)
        arrays = [[np.asarray(Image.open(Path(d) / n), dtype=float) for d in (real, fake)] for n in names]
        assert all(a.shape == (256, 256, 3) for pair in arrays for a in pair)
        return {"fid": float(np.mean([np.abs(a - b).mean() for a, b in arrays]))}

    monkeypatch.setattr(eval.fid, "compute_fid", pixel_distance)
    samples, image_root = T.get_task("coco30k_fid").read(data_root)
    references = {s.id: list(s.references) for s in samples}
    same = {s.id: str(image_root / s.image) for s in samples}  # "generated" = the prompts' own real images
    assert T.coco30k_fid_metric(data_root, tmp_path / "a")(references, same, "")["FID"] == 0.0
    swapped = {s.id: str(image_root / samples[-1 - k].image) for k, s in enumerate(samples)}
    assert T.coco30k_fid_metric(data_root, tmp_path / "b")(references, swapped, "")["FID"] > 10.0


# ----- the real LaVIT loader on a tiny released-layout checkpoint ---------------------------------


def test_lavit_released_layout_end_to_end(data_root, tmp_path, capfd):
    """`python -m eval --model lavit` on a tiny LaVIT written in the released layout: the family's loader, the
    adapter (which refuses missing or unknown decoding settings, so the tasks' LaVIT settings are complete) and
    lm-eval on its LLM."""
    import torch

    from model.lavit.configuration import lavit_tiny
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.official import write_official_layout
    from model.lavit.vocabulary import build_byte_text_tokenizer

    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    ckpt = write_official_layout(model, build_byte_text_tokenizer(), tmp_path / "LaVIT-tiny", max_shard_params=2_000_000)
    out = tmp_path / "out"
    argv = ["mini_vqa,vizwiz_val,mini_knowledge", "--model", "lavit", "--checkpoint", str(ckpt), "--data-root",
            str(data_root), "--output-dir", str(out), "--limit", "2", "--batch-size", "2"]  # fmt: skip
    assert run_cli(argv) == 0
    frame = pd.read_csv(out / "results.csv").set_index("metric")
    assert set(frame["task"]) == {"mini_vqa", "vizwiz_val", "mini_knowledge"}
    assert frame.loc["accuracy", "n_denominator"] == 2 * len(F.KNOWLEDGE_SUBJECTS)
    assert set(frame["model_id"]) == {f"lavit:{ckpt.resolve()}"}
    records = [json.loads(line) for line in (out / "mini_vqa" / "predictions.jsonl").read_text().splitlines()[1:]]
    assert [r["id"] for r in records] == [0, 1001] and all(isinstance(r["prediction"], str) for r in records)
    header = json.loads((out / "mini_vqa" / "predictions.jsonl").read_text().splitlines()[0])["header"]
    assert header["identity"]["task"]["generation"] == T.LAVIT_MINI_VQA
    # What ran is recorded: in the caches' identity and in every result row's config.
    lemmatisation = "lemmatised" if lemmatiser_installed() else "not lemmatised"
    expected = {
        "mini_vqa": {"decoding": "released", "selection": "gumbel", "selection_seed": 0, "question_processing": "released",
                     "question_template": "Question: {} Answer:", "answerability_step": False,
                     "lemmatisation": "not lemmatised"},
        "vizwiz_val": {"decoding": "released", "selection": "gumbel", "selection_seed": 0,
                       "question_processing": "released", "question_template": "Question: {} Answer:",
                       "answerability_step": True, "lemmatisation": lemmatisation},
    }  # fmt: skip
    for task, settings in expected.items():
        header = json.loads((out / task / "predictions.jsonl").read_text().splitlines()[0])["header"]
        assert header["identity"]["text_settings"] == settings
        rows = json.loads((out / task / "results.json").read_text())
        assert {json.dumps(json.loads(r["config"])["text_settings"], sort_keys=True) for r in rows} == {
            json.dumps(settings, sort_keys=True)
        }
    assert "text_settings" not in json.loads(json.loads((out / "mini_knowledge" / "results.json").read_text())[0]["config"])
    answers = [json.loads(line)["prediction"] for line in (out / "vizwiz_val" / "predictions.jsonl").read_text().splitlines()[1:]]
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # A second run with the same settings (text settings included) reuses every task: nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    assert run_cli(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps and len(stamps) == 3
    capfd.readouterr()


def lemmatiser_installed() -> bool:
    from model.lavit.released_processing import load_lemmatiser

    return load_lemmatiser(True).status == "lemmatised"


# ----- torchrun: the runner shards the samples over the processes ---------------------------------

WORKER = """
import sys
sys.path.insert(0, {tests!r})
import fixtures_official
fixtures_official.register_standin_family()
from eval.__main__ import run
code = run()
import torch.distributed as dist
# A rank that exits with its gloo group alive can abort in the group's threads after its work is done (seen in CI).
assert not dist.is_initialized(), "the evaluation left its process group alive"
sys.exit(code)
"""


def test_torchrun_shards_over_processes_and_merges(data_root, tmp_path):
    from train.distributed import _free_port

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=str(REPO / "tests")))
    (tmp_path / "ckpt").mkdir()
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", f"--master-port={_free_port()}",
         str(worker), "vqav2_val,mini_knowledge", "--model", "standin", "--checkpoint", str(tmp_path / "ckpt"),
         "--data-root", str(data_root), "--output-dir", str(out), "--limit", str(LIMIT)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "vqav2_val").glob("shard-*.jsonl")) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    frame = pd.read_csv(out / "results.csv")
    headline = frame[frame["headline"]].set_index("task")["value"]
    assert headline["vqav2_val"] == 50.0 and headline["mini_knowledge"] == 25.0
    assert result.stdout.count("vqa_accuracy") == 1  # rank 0 prints the table, once
