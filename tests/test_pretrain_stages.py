"""The mini world's stand-ins for the pretrained parts: `encoder_pretrain` (EVA-CLIP) and `llm_pretrain` (LLaMA).

Each trains on its mini preset's synthetic data, and its run directory is what the downstream stage loads: the ViT
into stage 1a (`encoder_path`), the LLM's text rows into stage 2 (`llm_path`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.config import get_preset, resolve


# Stage 2 needs a stage-1a run; tests about its LLM opt in to a random tokenizer explicitly.
RANDOM_TOKENIZER = "tokenizer_checkpoint=random-init"


def _cfg(stage: str, *overrides: str):
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)

    return resolve(get_preset(f"train/{stage}", "mini"), overrides=list(overrides))


def _run(stage: str, out: Path, *overrides: str) -> dict:
    from train.stages import run_stage

    return run_stage(stage, _cfg(stage, *overrides), out)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _latest_weights(out: Path) -> dict[str, torch.Tensor]:
    from train.stages.common import latest_checkpoint_dir

    return load_file(str(Path(latest_checkpoint_dir(str(out))) / "model.safetensors"))


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("encoder_pretrain")
    assert _run("encoder_pretrain", out)["finished"]  # the mini preset: 40 steps of 16 pairs
    return out


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llm_pretrain")
    assert _run("llm_pretrain", out)["finished"]  # the mini preset: 40 steps of 8 x 128 tokens
    return out


def test_encoder_pretrain_learns_to_match_images_and_captions(encoder_run):
    metrics = _metrics(encoder_run)
    assert len(metrics) == 40
    losses = [m["loss"] for m in metrics]
    first, last = _mean(losses[:8]), _mean(losses[-8:])
    # Chance level of the symmetric InfoNCE over 16 pairs is ln 16; the end of the run must be clearly below it.
    assert last < 0.8 * first and last < math.log(16) - 0.5, (first, last)
    assert _mean([m["i2t_acc"] for m in metrics[-8:]]) > 0.15  # chance: about 1/16
    assert all(0 < m["logit_scale"] <= 100 for m in metrics)


def test_encoder_checkpoint_keys_are_the_tokenizers_encoder_keys(encoder_run):
    from model.lavit.tokenizer import build_tokenizer

    saved = _latest_weights(encoder_run)
    encoder_keys = {k[len("encoder."):] for k in saved if k.startswith("encoder.")}
    tokenizer = build_tokenizer(_cfg("tokenizer").tokenizer)
    assert encoder_keys == set(tokenizer.encoder.state_dict())
    assert {k.split(".")[0] for k in saved} == {"encoder", "text_encoder", "logit_scale"}


def test_stage_1a_starts_from_the_pretrained_encoder_and_keeps_it_frozen(encoder_run, tmp_path):
    from harness.config import save_config
    from model.lavit.checkpoints import load_encoder_weights, load_tokenizer_checkpoint
    from train.lavit.tokenizer import TokenizerTask
    from model.lavit.tokenizer import build_tokenizer
    from train.distributed import init_distributed, shutdown_distributed
    from train.stages.common import latest_checkpoint_dir
    from train.trainer import Trainer

    pretrained = {k[len("encoder."):]: v for k, v in _latest_weights(encoder_run).items() if k.startswith("encoder.")}
    cfg = _cfg("tokenizer", f"encoder_path={encoder_run}", "loop.steps=3", "vq_start_step=1")
    # The run directory, one of its checkpoint directories and the file itself all load the same weights.
    for path in (encoder_run, latest_checkpoint_dir(str(encoder_run)), Path(latest_checkpoint_dir(str(encoder_run))) / "model.safetensors"):
        tokenizer = build_tokenizer(cfg.tokenizer)
        load_encoder_weights(tokenizer, str(path))
        for k, v in tokenizer.encoder.state_dict().items():
            assert torch.equal(v, pretrained[k]), k
    # Stage 1a's own loop (as run_stage drives it), so the trained module can be inspected after its steps.
    save_config(cfg, tmp_path)
    info = init_distributed("cpu")
    try:
        result = Trainer(TokenizerTask(cfg, tmp_path), info, tmp_path, cfg.optim, cfg.loop, cfg.dist).fit()
    finally:
        shutdown_distributed()
    assert result["last_step"] == 3 and all(math.isfinite(m["loss"]) for m in _metrics(tmp_path))
    for k, v in result["model"].tokenizer.encoder.state_dict().items():
        assert torch.equal(v, pretrained[k]), k  # frozen through the steps
    # Stage 1a leaves the loaded ViT out of its checkpoint; loading that checkpoint (stages 1b and 2) reloads the ViT
    # from the encoder_path recorded in the run's config.yaml instead of keeping a random one.
    assert not any(k.startswith("tokenizer.encoder.") for k in _latest_weights(tmp_path))
    downstream = build_tokenizer(cfg.tokenizer)
    load_tokenizer_checkpoint(downstream, latest_checkpoint_dir(str(tmp_path)))
    for k, v in downstream.encoder.state_dict().items():
        assert torch.equal(v, pretrained[k]), k


def test_encoder_weights_errors_name_the_path(encoder_run, tmp_path):
    from model.lavit.checkpoints import load_encoder_weights
    from model.lavit.tokenizer import build_tokenizer
    from model.weights import CheckpointLayoutError

    tokenizer = build_tokenizer(_cfg("tokenizer").tokenizer)
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_encoder_weights(tokenizer, str(missing))
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        (tmp_path / "empty_dir").mkdir()
        load_encoder_weights(tokenizer, str(tmp_path / "empty_dir"))
    # A deeper or wider ViT: strict loading names the file and the missing / mis-shaped keys.
    deeper = build_tokenizer(_cfg("tokenizer", "tokenizer.encoder_depth=3").tokenizer)
    with pytest.raises(CheckpointLayoutError, match=r"model\.safetensors.*missing keys.*blocks\.2\."):
        load_encoder_weights(deeper, str(encoder_run))
    wide = build_tokenizer(_cfg("tokenizer", "tokenizer.encoder_width=48").tokenizer)
    with pytest.raises(CheckpointLayoutError, match=r"shape mismatches.*blocks\.0\.attn"):
        load_encoder_weights(wide, str(encoder_run))


def test_llm_pretrain_loss_falls(llm_run):
    metrics = _metrics(llm_run)
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 40 and losses[0] == pytest.approx(math.log(320), abs=0.3)  # uniform over the 320 text ids
    assert _mean(losses[-8:]) < 0.6 * _mean(losses[:8]), losses
    assert all(m["tok_per_s"] > 0 for m in metrics)
    saved = _latest_weights(llm_run)
    assert saved["language_model.model.embed_tokens.weight"].shape == (320, 64)
    assert saved["language_model.lm_head.weight"].shape == (320, 64)
    assert all(k.startswith("language_model.") for k in saved)


def test_stage_2_starts_from_the_pretrained_llm(llm_run, tmp_path):
    from train.lavit.unified import UnifiedTask
    from train.distributed import DistInfo

    saved = _latest_weights(llm_run)
    task = UnifiedTask(_cfg("unified", f"llm_path={llm_run}", RANDOM_TOKENIZER), tmp_path)
    lm = task.build_model(DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")).lavit.language_model
    state = lm.state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert state[key].shape[0] == 320 + 2 + 64  # text + [IMG] + [/IMG] + codes
        assert torch.equal(state[key][:320], saved[f"language_model.{key}"])
    for key, value in saved.items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert torch.equal(state[key[len("language_model."):]], value), key
    # And stage 2 runs from it.
    assert _run("unified", tmp_path / "run", f"llm_path={llm_run}", RANDOM_TOKENIZER, "loop.steps=2")["finished"]


def test_llm_weights_errors_name_the_path(llm_run, tmp_path):
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from model.lavit.modeling_lavit import llama_config
    from train.lavit.unified import load_llama_weights
    from model.weights import CheckpointLayoutError

    lm = LlamaForCausalLM(llama_config(_cfg("unified").model))
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_llama_weights(lm, str(tmp_path / "no_such_run"), 320)
    # An encoder checkpoint is not an LLM checkpoint.
    save_file({"encoder.x": torch.zeros(1)}, str(tmp_path / "encoder.safetensors"))
    with pytest.raises(CheckpointLayoutError, match="encoder.safetensors"):
        load_llama_weights(lm, str(tmp_path / "encoder.safetensors"), 320)
    # A 3-layer LLM does not take the 2-layer checkpoint: the missing layer is named.
    deeper = LlamaForCausalLM(llama_config(_cfg("unified", "model.llm.num_layers=3").model))
    with pytest.raises(RuntimeError, match="layers.2"):
        load_llama_weights(deeper, str(llm_run), 320)


@pytest.mark.parametrize("stage", ["encoder_pretrain", "llm_pretrain"])
def test_paper_presets_refuse_with_the_downstream_key(stage, tmp_path):
    from train.lavit.encoder_pretrain import EncoderPretrainTask
    from train.lavit.llm_pretrain import LlmPretrainTask

    task = {"encoder_pretrain": EncoderPretrainTask, "llm_pretrain": LlmPretrainTask}[stage]
    key = {"encoder_pretrain": "encoder_path", "llm_pretrain": "llm_path"}[stage]
    with pytest.raises(ValueError, match=f"{key}=.*released_stand_in=false"):
        task(get_preset(f"train/{stage}", "paper"), tmp_path)


def test_encoder_preprocessing_is_the_tokenizers():
    import io

    from PIL import Image

    from train.lavit.encoder_pretrain import preprocess_image
    from model.lavit.tokenizer import build_tokenizer
    from train.data import synthetic_image_text

    image = Image.open(io.BytesIO(synthetic_image_text(3, 64)[0]))
    tokenizer = build_tokenizer(_cfg("tokenizer").tokenizer)
    assert torch.equal(preprocess_image(image, tokenizer.cfg.image_size), tokenizer.preprocess([image])[0].cpu())


def test_cli_help_lists_the_pretrain_stages():
    top = subprocess.run([sys.executable, "-m", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and "encoder_pretrain" in top.stdout and "llm_pretrain" in top.stdout, top.stderr
    sub = subprocess.run([sys.executable, "-m", "train", "encoder_pretrain", "--help"], capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0 and "--output-dir" in sub.stdout, sub.stderr


@pytest.mark.parametrize("stage", ["encoder_pretrain", "llm_pretrain"])
def test_an_interrupted_run_resumes_to_the_same_losses(stage, tmp_path):
    common = ("loop.steps=4", "loop.checkpoint_every=2")
    _run(stage, tmp_path / "whole", *common)
    _run(stage, tmp_path / "split", *common, "loop.max_steps_this_run=2")
    _run(stage, tmp_path / "split", *common)
    whole, split = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert [m["loss"] for m in split] == [m["loss"] for m in whole] and len(whole) == 4


def test_encoder_pretrain_positive_keys_make_same_content_pairs_positives_unicl():
    """With data.positive_keys the contrastive target spreads over the pairs of the same content (UniCL); without,
    each pair is its own only positive (CLIP)."""
    from train.lavit.config import encoder_pretrain_mini_preset
    from train.lavit.encoder_pretrain import ContrastiveModule, collate

    pixels = torch.zeros(3, 56, 56)
    pairs = [(pixels, [1, 2], ("circle", "red")), (pixels, [3], ("circle", "red")), (pixels, [4, 5, 6], ("triangle", "red"))]
    batch = collate(pairs)
    assert batch["positive"].tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    plain = collate([(p, ids, ()) for p, ids, _ in pairs])
    assert plain["positive"].tolist() == torch.eye(3, dtype=torch.bool).tolist()

    torch.manual_seed(0)
    module = ContrastiveModule(encoder_pretrain_mini_preset())
    generator = torch.Generator().manual_seed(0)
    batch["pixel_values"] = torch.randn(3, 3, 56, 56, generator=generator)
    plain["pixel_values"] = batch["pixel_values"]
    # Same inputs, different targets: the two losses differ, and the UniCL one equals its formula.
    label_aware, clip = module(batch).loss_sum, module(plain).loss_sum
    assert not torch.isclose(label_aware, clip)
    with torch.no_grad():
        image = torch.nn.functional.normalize(module.embed_images(batch["pixel_values"]), dim=-1)
        text = torch.nn.functional.normalize(module.text_encoder(batch["input_ids"], batch["attention_mask"]), dim=-1)
        logits = module.logit_scale.exp() * image @ text.T
        target = batch["positive"].float() / batch["positive"].float().sum(1, keepdim=True)
        expected = -((target * logits.log_softmax(1)).sum() + (target * logits.T.log_softmax(1)).sum()) / 2
    assert torch.isclose(label_aware.detach(), expected, atol=1e-5)
