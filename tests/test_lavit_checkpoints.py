"""From checkpoint to evaluable model (`model.lavit.checkpoints.load_for_eval`, the lavit family's loader):

- a tiny LaVIT written in the released layout loads from the directory alone (its lavit_config.yaml), and the
  loaded adapter captions and answers exactly as the in-memory model's;
- a 2-step `unified` mini run loads from its run directory (and from one checkpoint directory): the loaded weights
  are the checkpoint's and the tokenizer checkpoint's, and the LLM scored through lm-eval (`text_lm(LoadedModel)`, also the
  registered lm-eval model `lavit` and `python -m eval.mmlu --model lavit`) gives the log-likelihoods of a plain
  transformers Llama holding the checkpoint's LLM weights;
- anything else is an error naming the path (and the layouts looked for, or the key / file at fault).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from harness.config import get_preset, resolve
from harness.io import file_digest
from model.families import get_family
from model.lavit.checkpoints import load_for_eval
from model.lavit.configuration import lavit_tiny
from model.lavit.eval_adapter import LavitEvalAdapter
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.official import write_official_layout
from model.lavit.vocabulary import build_byte_text_tokenizer
from model.weights import CheckpointLayoutError

CAPTION = {"num_beams": 2, "min_new_tokens": 2, "max_new_tokens": 6, "length_penalty": 1.0, "early_stopping": False,
           "decoding": "released", "selection": "argmax"}  # fmt: skip
VQA = {"num_beams": 3, "min_new_tokens": 1, "max_new_tokens": 4, "length_penalty": 0.0, "early_stopping": True,
       "decoding": "released", "selection": "argmax", "lemmatize": False}  # fmt: skip
PAIRS = [("The cat", " sat on the mat"), ("Question: 2+2?\nAnswer:", " 4"), ("a", " b c")]


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


# --- released layout -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    tokenizer = build_byte_text_tokenizer()
    # A random LM decodes mostly stray bytes (empty captions after post-processing); larger head rows for letters
    # and space make the captions and answers words that depend on the image and the weights.
    letters = tokenizer.convert_tokens_to_ids([*"abcdefghijklmnopqrstuvwxyz", "\u0120"])
    with torch.no_grad():
        model.language_model.lm_head.weight[letters] *= 30
    root = write_official_layout(model, tokenizer, tmp_path_factory.mktemp("released") / "LaVIT-tiny")
    return model, tokenizer, root


def test_released_directory_round_trips_through_load_for_eval(released):
    model, tokenizer, root = released
    loaded = get_family("lavit").load(str(root))  # the config comes from the directory's lavit_config.yaml
    assert loaded.source == "released" and loaded.model_id == f"lavit:{root.resolve()}"
    assert loaded.config == model.lavit_config
    assert isinstance(loaded.adapter, LavitEvalAdapter)
    ours = LavitEvalAdapter(model, tokenizer, "in-memory")
    questions = ["Question: what is it? Answer:", "Question: which color? Answer:"]
    captions = ours.caption(images(2), "", **CAPTION)
    answers = ours.answer(images(2), questions, **VQA)
    assert all(captions) and all(answers) and captions[0] != captions[1]  # non-trivial outputs
    assert loaded.adapter.caption(images(2), "", **CAPTION) == captions
    assert loaded.adapter.answer(images(2), questions, **VQA) == answers
    assert loaded.adapter.score_text(*zip(*PAIRS)) == pytest.approx(ours.score_text(*zip(*PAIRS)), abs=1e-5)


def test_released_directory_without_pixel_decoding_loads_for_understanding(released, tmp_path):
    model, _, root = released
    copy = tmp_path / "no_pixels"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "pixel_decoding")
    loaded = load_for_eval(copy)
    assert loaded.config.pixel_decoder.enabled is False and loaded.adapter.model.pixel_decoder is None
    ours = LavitEvalAdapter(model, build_byte_text_tokenizer(), "in-memory")
    assert loaded.adapter.caption(images(1), "", **CAPTION) == ours.caption(images(1), "", **CAPTION)
    with pytest.raises(ValueError, match="pixel_decoder.enabled=False"):
        loaded.adapter.generate_images(
            ["a cat"], [0], top_k=5, temperature=1.0, cfg_scale=1.5, min_new_tokens=1, max_new_tokens=2,
            num_inference_steps=1, decoder_guidance_scale=2.0,
        )


# --- run directories of `python -m train unified` --------------------------------------------------------------


@pytest.fixture(scope="module")
def unified_run(tmp_path_factory):
    """A stage-1a tokenizer checkpoint (a .safetensors with keys tokenizer.*) and a 2-step unified mini run on it."""
    import train.lavit.config  # noqa: F401  (registers the stage presets)
    from model.lavit.tokenizer import build_tokenizer
    from train.stages import run_stage

    root = tmp_path_factory.mktemp("unified")
    cfg = get_preset("train/unified", "mini")
    torch.manual_seed(3)
    tok = build_tokenizer(cfg.model.tokenizer)
    tok_file = root / "tokenizer.safetensors"
    save_file({f"tokenizer.{k}": v.contiguous() for k, v in tok.state_dict().items()}, str(tok_file))
    cfg = resolve(cfg, overrides=[f"tokenizer_checkpoint={tok_file}", "loop.steps=2", "loop.checkpoint_every=2"])
    run = root / "run"
    summary = run_stage("unified", cfg, run)
    assert summary["finished"]
    return run, tok_file


def _llama_with_checkpoint_llm(run: Path):
    """A plain transformers Llama holding the run checkpoint's LLM weights (an independent path to the scores)."""
    from transformers import LlamaForCausalLM

    from harness.config import load_config
    from model.lavit.modeling_lavit import llama_config
    from train.lavit.config import UnifiedStageConfig

    cfg = load_config(UnifiedStageConfig, run / "config.yaml")
    state = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    prefix = "lavit.language_model."
    llama = LlamaForCausalLM(llama_config(cfg.model)).eval()
    llama.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return llama


def test_run_directory_loads_the_checkpoint_strictly(unified_run):
    run, tok_file = unified_run
    loaded = load_for_eval(run)
    assert loaded.source == "run" and loaded.model_id == f"lavit:{run.resolve()}@step=2"
    model = loaded.adapter.model
    assert model.pixel_decoder is None  # the stage trains none and saves none
    ours = model.state_dict()
    saved = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert saved and all(torch.equal(ours[k[len("lavit.") :]], v) for k, v in saved.items())
    assert any(k.startswith("lavit.language_model.") for k in saved)
    tokenizer_saved = load_file(str(tok_file))
    for name, param in model.visual_tokenizer.named_parameters():  # the frozen tokenizer: from its checkpoint
        assert torch.equal(param, tokenizer_saved[f"tokenizer.{name}"]), name
    # One checkpoint directory names the same model.
    assert load_for_eval(run / "checkpoints" / "step_00000002").model_id == loaded.model_id


def test_run_directory_in_bf16_keeps_rotary_and_selector_float32(unified_run):
    run, tok_file = unified_run
    model = load_for_eval(run, dtype="bfloat16").adapter.model
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16
    llm = model.lavit_config.llm
    dim = llm.hidden_size // llm.num_heads
    exact = 1.0 / (llm.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rotary = model.language_model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, exact)
    saved = load_file(str(tok_file))
    for name, param in model.visual_tokenizer.token_predictor.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, saved[f"tokenizer.token_predictor.{name}"]), name
    assert model.visual_tokenizer.encoder.pos_embed.dtype == torch.bfloat16
    # Streamed tensor by tensor into bf16 = the float32 load cast afterwards (`precision.place`).
    from model.lavit.precision import place

    cast = place(load_for_eval(run).adapter.model, "cpu", torch.bfloat16).state_dict()
    streamed = model.state_dict()
    assert streamed.keys() == cast.keys()
    assert all(streamed[k].dtype == cast[k].dtype and torch.equal(streamed[k], cast[k]) for k in cast)


def test_run_llm_scores_equal_a_plain_llama_with_the_checkpoint_weights(unified_run):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from eval.lm_adapter import text_lm  # importing it registers the per-family lm-eval models

    run, _ = unified_run
    loaded = load_for_eval(run)
    tokenizer = build_byte_text_tokenizer()
    llama = _llama_with_checkpoint_llm(run)
    expected = []
    for context, continuation in PAIRS:
        whole = tokenizer.encode(context + continuation)  # <s> + bytes
        n_context = len(tokenizer.encode(context))
        with torch.no_grad():
            logprobs = torch.log_softmax(llama(torch.tensor([whole])).logits[0].float(), dim=-1)
        expected.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(n_context, len(whole))))
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    scores = [ll for ll, _ in text_lm(loaded, batch_size=2).loglikelihood(instances, disable_tqdm=True)]
    assert scores == pytest.approx(expected, abs=1e-4)
    # The same numbers through the registered lm-eval model, and through the adapter's own scoring path.
    registered = get_model("lavit").create_from_arg_obj({"checkpoint": str(run)}, {"batch_size": 3, "device": "cpu"})
    assert [ll for ll, _ in registered.loglikelihood(instances, disable_tqdm=True)] == pytest.approx(expected, abs=1e-4)
    assert loaded.adapter.score_text(*zip(*PAIRS)) == pytest.approx(expected, abs=1e-4)


def test_mmlu_cli_on_a_unified_run(unified_run, tmp_path, capsys):
    from eval import mmlu

    run, _ = unified_run
    mmlu.main(["--model", "lavit", "--checkpoint", str(run), "--subjects", "sociology", "--limit", "1", "--json",
               "--output", str(tmp_path / "mmlu.json")])
    record = json.loads(capsys.readouterr().out)
    assert [(s["subject"], s["n"]) for s in record["subjects"]] == [("sociology", 1)]


def test_sharded_run_loads_from_every_verified_checkpoint(unified_run, tmp_path, capsys):
    """loop.checkpoint_format=sharded: a checkpoint before the end has only its DCP shards (merged on load), the last
    one also the exported model.safetensors. Both load the weights a full-format run of the same config wrote at
    that step, and a damaged newest checkpoint is skipped for the one before it."""
    from train.stages import run_stage

    _, tok_file = unified_run
    common = [f"tokenizer_checkpoint={tok_file}", "loop.steps=4", "loop.checkpoint_every=2"]
    runs = {}
    for layout in ("full", "sharded"):
        runs[layout] = tmp_path / layout
        cfg = resolve(get_preset("train/unified", "mini"), overrides=[*common, f"loop.checkpoint_format={layout}"])
        assert run_stage("unified", cfg, runs[layout])["finished"]
    early, last = (runs["sharded"] / "checkpoints" / f"step_0000000{s}" for s in (2, 4))
    assert not (early / "model.safetensors").exists() and (early / "dcp").is_dir() and (last / "model.safetensors").is_file()
    for step, checkpoint in ((2, early), (4, last)):
        model = load_for_eval(checkpoint).adapter.model.state_dict()
        full = load_file(str(runs["full"] / "checkpoints" / f"step_0000000{step}" / "model.safetensors"))
        assert full and all(torch.equal(model[k[len("lavit.") :]], v) for k, v in full.items()), step
    (last / "trainer.pt").write_bytes((last / "trainer.pt").read_bytes()[:-1])  # truncated
    capsys.readouterr()
    assert load_for_eval(runs["sharded"]).model_id.endswith("@step=2")
    assert "trainer.pt" in capsys.readouterr().out  # the skipped checkpoint's bad file is named


# --- wrong layouts ---------------------------------------------------------------------------------------------


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("synthetic_data"))
    return copy


def test_unknown_layouts_name_the_path_and_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'absent'} does not exist; expected a released"):
        load_for_eval(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    message = rf"{tmp_path / 'empty'} is not a LaVIT checkpoint: expected a released LaVIT directory .* or a run"
    with pytest.raises(CheckpointLayoutError, match=message):
        load_for_eval(tmp_path / "empty")


@pytest.mark.parametrize("stage", ["unified", "pixel_decoder", "llm_pretrain"])
def test_the_loader_reads_a_run_config_as_its_stage_wrote_it(stage, tmp_path):
    """The loader reads a run's config.yaml as plain data (`RUN_KEYS`), not through the training configs: each key it
    reads is a field of the stage's config, and a saved preset reads back with the preset's values."""
    import dataclasses

    from harness.config import save_config
    from model.lavit.checkpoints import RUN_KEYS, RunRecord, read_run_record
    from train.registry import stage_config_class

    cls = stage_config_class(stage)
    assert set(RUN_KEYS[stage]) <= {f.name for f in dataclasses.fields(cls)}
    cfg = resolve(get_preset(f"train/{stage}", "mini"), overrides=["model.llm.num_layers=3"])
    save_config(cfg, tmp_path)
    assert read_run_record(tmp_path, stage) == RunRecord(**{k: getattr(cfg, k) for k in RUN_KEYS[stage]})


def test_broken_runs_are_named(unified_run, tmp_path):
    run, _ = unified_run
    copy = _copy_run(run, tmp_path)
    # A checkpoint without its manifest is incomplete: the run has none left.
    (copy / "checkpoints" / "step_00000002" / "manifest.json").unlink()
    with pytest.raises(CheckpointLayoutError, match=rf"run directory {copy} has no complete checkpoint"):
        load_for_eval(copy)
    shutil.rmtree(copy)

    copy = _copy_run(run, tmp_path)
    file = copy / "checkpoints" / "step_00000002" / "model.safetensors"
    state = load_file(str(file))
    state.pop("lavit.language_model.lm_head.weight")
    state["lavit.language_model.extra.weight"] = torch.zeros(1)
    state["lavit.understanding_encoder.vit_proj.bias"] = torch.zeros(3)
    save_file(state, str(file))
    # Edited after the manifest was written: the checkpoint no longer verifies, and the file is named.
    with pytest.raises(CheckpointLayoutError, match=rf"run directory {copy} has no complete checkpoint that verifies .*model.safetensors"):
        load_for_eval(copy)
    with pytest.raises(CheckpointLayoutError, match=r"step_00000002 does not verify against its manifest.json: .*model.safetensors"):
        load_for_eval(copy / "checkpoints" / "step_00000002")
    # Written so (a run of another model config): it verifies, and the strict load names every key that differs.
    manifest_file = file.parent / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"]["model.safetensors"] = file_digest(file)
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointLayoutError,
        match=r"model.safetensors: weights do not match .*missing keys: 1 \(lavit.language_model.lm_head.weight\); "
        r"unexpected keys: 1 \(lavit.language_model.extra.weight\); shape mismatches: 1 "
        r"\(lavit.understanding_encoder.vit_proj.bias: file \(3,\) vs model \(64,\)\)",
    ):
        load_for_eval(copy)
    shutil.rmtree(copy)

    copy = _copy_run(run, tmp_path)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["tokenizer_checkpoint"] = ""
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointLayoutError, match=r"config.yaml: tokenizer_checkpoint is empty"):
        load_for_eval(copy)
    config["tokenizer_checkpoint"] = "random-init"  # the explicit opt-in of smoke runs: no checkpoint holds it either
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointLayoutError, match=r"config.yaml: tokenizer_checkpoint is 'random-init'"):
        load_for_eval(copy)
    import train.lavit.config  # noqa: F401
    from harness.config import save_config

    save_config(get_preset("train/tokenizer", "mini"), copy)  # a run of another stage
    with pytest.raises(CheckpointLayoutError, match=r"config.yaml is not a `unified` stage config"):
        load_for_eval(copy)
