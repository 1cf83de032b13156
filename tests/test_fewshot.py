"""In-context (0-/4-shot) evaluation: the interleaved request, demonstration drawing, seed averaging, LaVIT's
`generate_interleaved` on the tiny preset.

The runner-level tests use a stand-in model that copies the answer of the last demonstration, so each seed's
accuracy follows from the drawn demonstrations and is computed here by hand from the samples.
"""

from __future__ import annotations

import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fixtures_official as F
from eval import fewshot
from eval import tasks as T
from eval.evaluate import evaluate_tasks, prepare_tasks
from eval.interface import (
    EvalSample,
    EvalTask,
    EvaluationError,
    InterleavedGenerator,
    cut_continuation,
    fewshot_parts,
    interleaved_sequence,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    F.write_miniworld(root)
    F.write_okvqa(root)
    return root


# ----- the template ------------------------------------------------------------------------------


def test_template_gives_query_demonstration_and_cut():
    task = EvalTask(name="t", kind="interleaved", prompt="Question: {text} Short answer: {answer}\n")
    assert fewshot_parts(task.prompt) == ("Question: {text} Short answer:", "\n")
    red, blue = Image.new("RGB", (2, 2), "red"), Image.new("RGB", (2, 2), "blue")
    sample = EvalSample(id=1, image="q.png", text="what?", shots=(("a.png", "which?", "red"),))
    assert interleaved_sequence(task, sample, blue, [red]) == [
        red, "Question: which? Short answer: red\n", blue, "Question: what? Short answer:"]  # fmt: skip
    assert cut_continuation(task, " blue\nQuestion: next") == "blue"
    caption = EvalTask(name="c", kind="interleaved", prompt="{answer}\n")  # no prompt: a 0-shot query is the image alone
    assert interleaved_sequence(caption, EvalSample(id=2, image="q.png"), blue, []) == [blue]
    assert cut_continuation(EvalTask(name="s", kind="interleaved", prompt="Q: {text} A: {answer}"), " a b\nc ") == "a b\nc"
    for bad in ("Q: {text}", "{answer} {answer}", "{answer} {other}"):
        with pytest.raises(EvaluationError, match="task 'x'"):
            fewshot_parts(bad, "x")


def test_demonstrations_depend_on_seed_and_query_only():
    pool = [fewshot.Demo(f"{i}.png", f"q{i}", (f"a{i}", f"a{i}", "other")) for i in range(20)]
    shots = fewshot.draw_shots(pool, 4, 0, 42)
    assert shots == fewshot.draw_shots(list(pool), 4, 0, 42) and len({s[0] for s in shots}) == 4
    assert all(s[2] == "a" + s[0].split(".")[0] for s in shots)  # the most frequent human answer
    assert fewshot.draw_shots(pool, 4, 1, 42) != shots and fewshot.draw_shots(pool, 4, 0, 43) != shots
    assert fewshot.draw_shots(pool, 0, 0, 42) == ()
    queries = [EvalSample(id=i, image=f"t{i}.png", text="q", references=("a",)) for i in range(5)]
    full = fewshot.with_shots(queries, pool, 4, (0, 1))
    assert [s.id for s in full[:2]] == ["s0/0", "s0/1"] and len(full) == 10
    assert fewshot.with_shots(queries[:2], pool, 4, (0, 1))[2] == full[5]  # --limit does not change a query's shots
    with pytest.raises(Exception, match="at least 4"):
        fewshot.draw_shots(pool[:3], 4, 0, 1)


@given(seed=st.integers(0, 10**6), query=st.integers(0, 10**6), k=st.integers(2, 8))
@settings(max_examples=50, deadline=None)
def test_shuffled_answers_are_the_same_demonstrations_with_each_answer_moved(seed, query, k):
    pool = [fewshot.Demo(f"{i}.png", f"q{i}", (f"a{i}",)) for i in range(20)]
    true, shuffled = fewshot.draw_shots(pool, k, seed, query), fewshot.draw_shots(pool, k, seed, query, shuffle_answers=True)
    assert [s[:2] for s in shuffled] == [s[:2] for s in true]  # the same images and questions, in the same order
    assert sorted(s[2] for s in shuffled) == sorted(s[2] for s in true)  # the same answers ...
    assert all(s[2] != t[2] for s, t in zip(shuffled, true))  # ... none left with its own demonstration


def test_the_shuffled_control_is_registered_beside_each_4shot_task():
    from eval.tasks import get_task

    for base in ("mini_vqa", "mini_caption", "okvqa_val", "coco_karpathy_test"):
        control, task = get_task(f"{base}_4shot_shuffled"), get_task(f"{base}_4shot")
        assert control.files == task.files and control.metric == task.metric and "shuffled" in control.description


def test_seed_average_reports_mean_std_and_each_seed():
    refs = {f"s{s}/{q}": ["red"] * 10 for s in (0, 1, 2) for q in range(4)}
    preds = {f"s{s}/{q}": "red" if q < s + 1 else "blue" for s in (0, 1, 2) for q in range(4)}  # 25, 50, 75 %
    values = fewshot.seed_averaged("vqa_accuracy")(refs, preds, "")
    assert [values[f"vqa_accuracy/seed={s}"] for s in (0, 1, 2)] == pytest.approx([25.0, 50.0, 75.0])
    assert values["vqa_accuracy"] == pytest.approx(50.0)
    assert values["vqa_accuracy/std"] == pytest.approx(25.0)  # sample standard deviation of 25, 50, 75


# ----- through the runner and python -m eval's library --------------------------------------------


class CopyLastDemonstration:
    """Answers with the answer of the last demonstration (0-shot: "none"); records every sequence."""

    model_id = "copy-last-demo"

    def __init__(self):
        self.sequences = []

    def generate_interleaved(self, sequences, **generation):
        self.sequences += sequences
        out = []
        for seq in sequences:
            texts = [p for p in seq[:-1] if isinstance(p, str)]
            last = re.search(r"[Aa]nswer: (.*?)\.?\n$", texts[-1]) if texts else None
            # the answer, then both separators the templates use ("." and a new line), then more text to cut off
            out.append(f" {last.group(1) if last else 'none'}.\nQuestion: more")
        return out


def _loaded(model):
    from model.families import LoadedModel

    return LoadedModel(model_id=model.model_id, adapter=model, llm=None, config={"kind": "copy"}, source="released")


def test_four_shot_end_to_end_per_seed_values_by_hand(data_root, tmp_path):
    model = CopyLastDemonstration()
    assert isinstance(model, InterleavedGenerator)
    frame = evaluate_tasks("mini_vqa_4shot", "copy", None, data_root, tmp_path / "out", loaded=_loaded(model), progress=False)
    values = dict(zip(frame["metric"], frame["value"]))
    (prepared,) = prepare_tasks([T.get_task("mini_vqa_4shot")], data_root)
    expected = {}
    for seed in fewshot.SEEDS_4SHOT:
        mine = [s for s in prepared.samples if s.id.startswith(f"s{seed}/")]
        expected[seed] = 100.0 * statistics.fmean(s.shots[-1][2] == s.references[0] for s in mine)
        assert values[f"vqa_accuracy/seed={seed}"] == pytest.approx(expected[seed])
    assert values["vqa_accuracy"] == pytest.approx(statistics.fmean(expected.values()))
    assert values["vqa_accuracy/std"] == pytest.approx(statistics.stdev(expected.values()))
    assert len(set(expected.values())) > 1  # the seeds do draw different demonstrations
    # every sequence: 4 (image, demonstration) pairs, then the query image and text, in order
    seq = model.sequences[0]
    assert [type(p).__name__ for p in seq] == ["Image", "str"] * 5
    # the mini world's own phrasing (eval/fewshot.py MINI_VQA_TEMPLATE), not OpenFlamingo's "Short answer:"
    assert seq[1].startswith("Question: ") and " Answer: " in seq[1] and seq[1].endswith(".\n")
    assert seq[-1] == "Question: What color is the picture 0? Answer:"
    assert frame[frame["metric"] == "vqa_accuracy"]["headline"].item()


def test_zero_shot_is_the_same_path_without_demonstrations(data_root, tmp_path):
    model = CopyLastDemonstration()
    frame = evaluate_tasks("okvqa_val_0shot", "copy", None, data_root, tmp_path / "out", loaded=_loaded(model), progress=False)
    assert [len(s) for s in model.sequences] == [2] * 6  # [image, "Question: ... Short answer:"]
    assert dict(zip(frame["metric"], frame["value"]))["vqa_accuracy"] == 0.0  # "none" is never right
    assert set(frame["metric"]) == {"vqa_accuracy", "vqa_accuracy/std", "vqa_accuracy/seed=0"}


def test_missing_train_split_file_is_named_before_any_model_loads(tmp_path, capsys):
    from eval.__main__ import main
    from harness.errors import run_cli

    F.write_okvqa(tmp_path)
    (tmp_path / fewshot.OKVQA_TRAIN_ANNOTATIONS).unlink()
    (tmp_path / "ckpt").mkdir()  # empty: loading it would fail, so exit 2 means the files were checked first
    assert run_cli(main, ["okvqa_val_0shot,okvqa_val_4shot", "--model", "lavit", "--checkpoint", str(tmp_path / "ckpt"),
                          "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: task okvqa_val_4shot expects okvqa/mscoco_train2014_annotations.json")


def test_family_settings_of_the_interleaved_tasks():
    spec = T.get_task("coco_karpathy_test_4shot")
    lavit = spec.eval_task("lavit")
    assert lavit.kind == "interleaved" and lavit.prompt == "{answer}\n" and lavit.generation["num_beams"] == 2
    vila = spec.eval_task("vila")
    assert vila.prompt == "Output: {answer}\n" and vila.generation["num_beams"] == 1
    assert vila.generation["max_new_tokens"] == 20 and vila.generation["do_sample"] is False
    assert T.get_task("okvqa_val_4shot").eval_task("vila").generation["max_new_tokens"] == 5


# ----- LaVIT (tiny preset) -----------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_lavit_generate_interleaved_tiny():
    import numpy as np
    import torch

    from model.lavit.configuration import lavit_tiny
    from model.lavit.eval_adapter import LavitEvalAdapter
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
    from model.lavit.vocabulary import build_byte_text_tokenizer

    torch.manual_seed(0)
    adapter = LavitEvalAdapter(LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval(),
                               build_byte_text_tokenizer(), model_id="lavit-tiny-random")  # fmt: skip
    rng = np.random.default_rng(0)
    a, b, c = (Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3))
    settings = {"num_beams": 2, "min_new_tokens": 2, "max_new_tokens": 6, "length_penalty": 1.0, "early_stopping": False,
                "decoding": "released", "selection": "argmax"}  # fmt: skip
    # one image then text is exactly the understanding input: the same continuation as a caption request, uncut
    assert adapter.generate_interleaved([[a, "Hi"]], **settings) == adapter._generate_text([a], ["Hi"], settings)
    sequences = [[a, "Q: x A: y\n", b, "Q: z A: w\n", c, "Q: v A:"], [c, "Q: v A:"]]
    both = adapter.generate_interleaved(sequences, **settings)
    assert len(both) == 2 and all(isinstance(t, str) for t in both)
    assert both[0] == adapter.generate_interleaved(sequences[:1], **settings)[0]  # independent of the batch
    item = adapter.model.interleaved_item([adapter._ids(["ab"])[0], torch.zeros(3, adapter.model.embed_ids(torch.tensor([0])).shape[-1])])
    assert item.embeds.shape[0] == 2 + 1 + 3 + 1  # text, [IMG], 3 image slots, [/IMG]
    with pytest.raises(ValueError, match="missing"):
        adapter.generate_interleaved([[a]], num_beams=1)
