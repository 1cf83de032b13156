"""MMLU through lm-eval from the local CSVs (eval/mmlu.py) and the LLM adapters (eval/lm_adapter.py).

A tiny random Llama (hidden 32, 2 layers) with a 400-token byte-level BPE trained here on the MMLU dev CSVs stands in
for a multimodal checkpoint's LLM (VILA's `llm/` layout); the adapter must reproduce lm-eval's own `hf` model on the
same checkpoint exactly. The per-family models (`lavit`: a family's loader, then its LLM) are tested with the family's
own checkpoints (tests/test_lavit_checkpoints.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import mmlu

SUBJECTS = ["abstract_algebra", "philosophy", "sociology"]  # STEM, Humanities, Social Sciences
LIMIT = 3


def build_tiny_llama(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [p.read_text() for p in sorted((mmlu.DEFAULT_DATA_DIR / "dev").glob("*_dev.csv"))]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # Prepend BOS like LLaMA's tokenizer, so the BOS handling of both code paths is exercised.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny Llama in two layouts: plain HF folder, VILA (llm/)."""
    root = tmp_path_factory.mktemp("mmlu_ckpt")
    build_tiny_llama(root / "hf")
    (root / "vila").mkdir()
    (root / "vila" / "llm").symlink_to(root / "hf", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def adapter_vs_hf(checkpoints):
    from lm_eval.models.huggingface import HFLM

    from eval.lm_adapter import VILAAdapter

    ours = mmlu.evaluate(VILAAdapter(checkpoint=str(checkpoints / "vila"), batch_size=3, device="cpu"),
                         subjects=SUBJECTS, limit=LIMIT)
    reference = mmlu.evaluate(HFLM(pretrained=str(checkpoints / "hf"), device="cpu", batch_size=4),
                              subjects=SUBJECTS, limit=LIMIT)
    return ours, reference


def test_adapter_accuracy_equals_lm_eval_hf_exactly(adapter_vs_hf):
    (ours_subjects, ours_groups, ours_raw), (ref_subjects, ref_groups, ref_raw) = adapter_vs_hf
    pd.testing.assert_frame_equal(ours_subjects, ref_subjects)
    pd.testing.assert_frame_equal(ours_groups, ref_groups)
    assert list(ours_subjects["n"]) == [LIMIT] * len(SUBJECTS)
    # Exactness below the accuracy: every (context, " X") log-likelihood and greedy flag agrees.
    for task, docs in ours_raw["samples"].items():
        for ours_doc, ref_doc in zip(docs, ref_raw["samples"][task], strict=True):
            assert ours_doc["arguments"] == ref_doc["arguments"]
            for (ours_ll, ours_greedy), (ref_ll, ref_greedy) in zip(
                (r[0] for r in ours_doc["resps"]), (r[0] for r in ref_doc["resps"]), strict=True
            ):
                assert ours_ll == pytest.approx(ref_ll, abs=1e-4)
                assert ours_greedy == ref_greedy


def test_prompt_is_the_original_five_shot_format(adapter_vs_hf):
    (_, _, raw), _ = adapter_vs_hf
    dev = mmlu.read_subject_csv(mmlu.DEFAULT_DATA_DIR / "dev" / "philosophy_dev.csv")
    test = mmlu.read_subject_csv(mmlu.DEFAULT_DATA_DIR / "test" / "philosophy_test.csv")

    def block(doc):
        a, b, c, d = doc["choices"]
        return f"{doc['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"

    expected = "The following are multiple choice questions (with answers) about philosophy.\n\n"
    expected += "".join(f"{block(doc)} {'ABCD'[doc['answer']]}\n\n" for doc in dev[:5]) + block(test[0])
    first = raw["samples"]["mmlu_local_philosophy"][0]
    assert [arg for arg in first["arguments"]] == [(expected, f" {letter}") for letter in "ABCD"]
    assert first["target"] == test[0]["answer"]


def test_loglikelihood_is_exact_and_batch_independent(checkpoints):
    from lm_eval.api.instance import Instance

    from eval.lm_adapter import VILAAdapter

    requests = [("Question: 2+2?\nAnswer:", " B"), ("The capital", " of France is Paris"), ("A", " B C D E F G")]
    instances = [Instance("loglikelihood", {}, args, i) for i, args in enumerate(requests)]
    one = VILAAdapter(checkpoint=str(checkpoints / "vila"), batch_size=1, device="cpu")
    many = VILAAdapter(checkpoint=str(checkpoints / "vila"), batch_size=3, device="cpu")
    batched = many.loglikelihood(instances, disable_tqdm=True)
    single = one.loglikelihood(instances, disable_tqdm=True)
    tokenizer, model = one.tokenizer, one.model
    for (context, continuation), (ll_batched, _), (ll_single, _) in zip(requests, batched, single, strict=True):
        whole = tokenizer.encode(context + continuation)  # BOS + tokens
        n_context = len(tokenizer.encode(context))
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)  # (t, vocab)
        expected = sum(float(logprobs[t - 1, whole[t]]) for t in range(n_context, len(whole)))
        assert ll_single == pytest.approx(expected, abs=1e-4)
        assert ll_batched == pytest.approx(expected, abs=1e-4)


def test_rolling_and_generation_match_lm_eval_hf(checkpoints):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from eval.lm_adapter import VILAAdapter

    ours = VILAAdapter(checkpoint=str(checkpoints / "vila"), batch_size=2, device="cpu", max_length=32)
    reference = HFLM(pretrained=str(checkpoints / "hf"), device="cpu", batch_size=2, max_length=32)
    # lm-eval's hf model tokenizes rolling text with the tokenizer's special tokens, so with a BOS-adding tokenizer it
    # also scores p(BOS | BOS); ours encodes without them (the prefix token is the only BOS). With add_bos_token=False
    # the hf model does the same, and the numbers must agree.
    reference_no_bos = HFLM(pretrained=str(checkpoints / "hf"), device="cpu", batch_size=2, max_length=32,
                            add_bos_token=False)
    text = "The following are multiple choice questions (with answers) about anatomy. " * 3  # > 32 tokens: windows
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    ours_total = ours.loglikelihood_rolling(rolling, disable_tqdm=True)[0]
    assert ours_total == pytest.approx(reference_no_bos.loglikelihood_rolling(rolling, disable_tqdm=True)[0], abs=1e-3)
    assert ours_total > reference.loglikelihood_rolling(rolling, disable_tqdm=True)[0]  # minus the extra BOS term
    generate = [Instance("generate_until", {}, ("Question: what is", {"until": ["\n\n"], "max_gen_toks": 8}), 0)]
    ours_text = ours.generate_until(generate, disable_tqdm=True)[0]
    assert ours_text == reference.generate_until(generate, disable_tqdm=True)[0]
    stop = ours_text[3:5]  # a stop sequence taken from the greedy output itself cuts the text there
    cut = [Instance("generate_until", {}, ("Question: what is", {"until": [stop], "max_gen_toks": 8}), 0)]
    assert len(stop) == 2 and ours.generate_until(cut, disable_tqdm=True)[0] == ours_text.split(stop)[0]


def test_category_aggregation_hand_checked():
    table = pd.DataFrame([
        {"subject": "anatomy", "category": "STEM", "n": 10, "correct": 5},
        {"subject": "college_physics", "category": "STEM", "n": 30, "correct": 27},
        {"subject": "philosophy", "category": "Humanities", "n": 20, "correct": 4},
        {"subject": "sociology", "category": "Social Sciences", "n": 4, "correct": 3},
        {"subject": "virology", "category": "Other", "n": 16, "correct": 8},
    ])
    groups = mmlu.aggregate(table).set_index("group")
    # micro averages: STEM 32/40 (not the macro (0.5 + 0.9) / 2 = 0.7), overall 47/80
    assert groups.loc["STEM", "acc"] == pytest.approx(0.8)
    assert groups.loc["Humanities", "acc"] == pytest.approx(0.2)
    assert groups.loc["Social Sciences", "acc"] == pytest.approx(0.75)
    assert groups.loc["Other", "acc"] == pytest.approx(0.5)
    assert (groups.loc["Overall", "n"], groups.loc["Overall", "correct"]) == (80, 47)
    assert groups.loc["Overall", "acc"] == pytest.approx(47 / 80)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(sorted(mmlu.SUBJECT_CATEGORY)), st.integers(1, 50), st.data()),
                min_size=1, max_size=8, unique_by=lambda row: row[0]))
def test_overall_is_the_question_weighted_mean_of_categories(rows):
    table = pd.DataFrame([
        {"subject": s, "category": mmlu.CATEGORY_NAMES[mmlu.SUBJECT_CATEGORY[s]], "n": n,
         "correct": data.draw(st.integers(0, n))}
        for s, n, data in rows
    ])
    groups = mmlu.aggregate(table).set_index("group")
    categories = groups.drop(index="Overall")
    assert categories["n"].sum() == groups.loc["Overall", "n"] == table["n"].sum()
    weighted = (categories["acc"] * categories["n"]).sum() / categories["n"].sum()
    assert groups.loc["Overall", "acc"] == pytest.approx(weighted)


def test_subject_categories_are_the_57_standard_ones():
    counts = pd.Series(mmlu.SUBJECT_CATEGORY).value_counts().to_dict()
    assert counts == {"stem": 19, "humanities": 13, "social_sciences": 12, "other": 13}
    assert mmlu.list_subjects(mmlu.resolve_data_dir(None)) == sorted(mmlu.SUBJECT_CATEGORY)


def test_csv_text_is_kept_verbatim_and_bad_files_fail(tmp_path):
    docs = mmlu.read_subject_csv(mmlu.DEFAULT_DATA_DIR / "test" / "college_computer_science_test.csv")
    assert any("None" in doc["choices"] for doc in docs)  # pandas' default would have made these NaN
    assert all(isinstance(c, str) for doc in docs for c in doc["choices"])
    bad = tmp_path / "x_test.csv"
    bad.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,B\n")
    with pytest.raises(ValueError, match="x_test.csv:2: answer 'B'"):
        mmlu.read_subject_csv(bad)
    bad.write_text("q,a,b,c,d,1\n")
    with pytest.raises(ValueError, match="header"):
        mmlu.read_subject_csv(bad)
    with pytest.raises(FileNotFoundError, match="no dev/ folder"):
        mmlu.resolve_data_dir(tmp_path)


def test_written_tasks_load_in_lm_eval_with_groups(tmp_path):
    from lm_eval.tasks import TaskManager

    names = mmlu.write_tasks(tmp_path, subjects=["anatomy", "philosophy"])
    assert names == ["mmlu_local_anatomy", "mmlu_local_philosophy"]
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {"mmlu_local", "mmlu_local_stem", "mmlu_local_humanities", *names} <= set(manager.all_tasks)
    task = manager.load(["mmlu_local_anatomy"])
    (anatomy,) = [t for t in _leaf_tasks(task)]
    assert len(anatomy.test_docs()) == len(mmlu.read_subject_csv(mmlu.DEFAULT_DATA_DIR / "test" / "anatomy_test.csv"))
    assert len(anatomy.fewshot_docs()) == 5


def _leaf_tasks(loaded):
    from lm_eval.api.task import Task

    stack = [loaded]
    while stack:
        item = stack.pop()
        if isinstance(item, Task):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def test_missing_llm_folder_is_named(tmp_path):
    from lm_eval.api.registry import get_model

    from eval.lm_adapter import VILAAdapter
    from model.weights import CheckpointLayoutError

    # A family's model goes through the family's loader, whose error names the path and the layouts it knows.
    with pytest.raises(CheckpointLayoutError, match=rf"{tmp_path} is not a LaVIT checkpoint: expected a released"):
        get_model("lavit").create_from_arg_obj({"checkpoint": str(tmp_path)}, {"device": "cpu"})
    with pytest.raises(FileNotFoundError, match=r"llm does not exist"):
        VILAAdapter(checkpoint=str(tmp_path))
    (tmp_path / "llm").mkdir()
    with pytest.raises(FileNotFoundError, match=r"llm has no config.json"):
        VILAAdapter(checkpoint=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoint folder does not exist"):
        VILAAdapter(checkpoint=str(tmp_path / "nowhere"))


def test_cli_json_and_registry(checkpoints, capsys):
    from lm_eval.api.registry import get_model

    from eval.lm_adapter import FamilyLM, VILAAdapter

    assert get_model("vila-llm") is VILAAdapter  # the LLM of a per-component release, no vision tower
    for family in ("lavit", "vila"):  # one per family
        assert issubclass(get_model(family), FamilyLM) and get_model(family).FAMILY == family
    mmlu.main(["--model", "vila-llm", "--checkpoint", str(checkpoints / "vila"), "--subjects", "sociology",
               "--limit", "2", "--json", "--output", str(checkpoints / "mmlu.json")])
    record = json.loads(capsys.readouterr().out)
    assert record["num_fewshot"] == 5 and record["limit"] == 2
    assert [(s["subject"], s["category"], s["n"]) for s in record["subjects"]] == [("sociology", "Social Sciences", 2)]
    assert [g["group"] for g in record["groups"]] == ["Social Sciences", "Overall"]
    saved = json.loads((checkpoints / "mmlu.json").read_text())
    assert saved["groups"] == record["groups"] and "provenance" in saved
