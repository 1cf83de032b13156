"""The three stages chained at mini size: 1a's checkpoint feeds 1b and 2; the pre-tokenised code cache gives the
same stage-2 losses as tokenizing on the fly; frozen parts stay frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.config import get_preset, resolve


def _run(stage: str, out: Path, *overrides: str) -> dict:
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)
    from train.stages import run_stage

    return run_stage(stage, resolve(get_preset(f"train/{stage}", "mini"), overrides=list(overrides)), out)


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1a")
    summary = _run("tokenizer", out, "loop.steps=4", "vq_start_step=2")
    assert summary["finished"]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("recon_loss", "ratio_loss", "keep_ratio", "codebook_perplexity", "codebook_fraction_used", "num_tokens"):
        assert key in metrics[-1]
    assert 0 < metrics[-1]["keep_ratio"] <= 1 and metrics[-1]["codebook_fraction_used"] > 0
    return out


def test_pixel_decoder_trains_only_the_unet_and_the_context_projection_on_the_stage1a_tokenizer(tokenizer_run, tmp_path):
    summary = _run("pixel_decoder", tmp_path, f"tokenizer_checkpoint={tokenizer_run}", "loop.steps=2")
    assert summary["finished"] and all(torch.isfinite(torch.tensor(_losses(tmp_path))))
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert any(k.startswith("pixel_decoder.unet.") for k in saved)
    # Of the tokenizer only unet_proj (x_rec -> the U-Net's context) is saved: it trained; the rest is rebuilt.
    assert {k for k in saved if k.startswith("tokenizer.")} == {"tokenizer.decoder.unet_proj.weight", "tokenizer.decoder.unet_proj.bias"}
    assert not any(k.startswith("pixel_decoder.vae.") for k in saved)
    stage_1a = load_file(str(tokenizer_run / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert not torch.equal(saved["tokenizer.decoder.unet_proj.weight"], stage_1a["tokenizer.decoder.unet_proj.weight"])
    optim = torch.load(tmp_path / "checkpoints" / "step_00000002" / "optimizer.pt", weights_only=True)
    assert optim["state"] and all(k.startswith(("pixel_decoder.unet.", "tokenizer.decoder.unet_proj.")) for k in optim["state"])
    assert any(k.startswith("tokenizer.decoder.unet_proj.") for k in optim["state"])


def test_unified_with_code_cache_matches_on_the_fly_tokenization(tokenizer_run, tmp_path):
    from model.lavit.tokenizer import build_tokenizer
    from train.data import write_synthetic_image_text_shards
    from model.lavit.checkpoints import load_tokenizer_checkpoint
    from train.lavit.unified import cache_codes
    from train.stages.common import latest_checkpoint_dir

    shards = write_synthetic_image_text_shards(tmp_path / "shards", num_shards=2, per_shard=16, image_size=64)
    pattern = str(tmp_path / "shards" / "*.tar")
    tokenizer = build_tokenizer(get_preset("train/unified", "mini").model.tokenizer)
    load_tokenizer_checkpoint(tokenizer, latest_checkpoint_dir(str(tokenizer_run)))
    counts = cache_codes(tokenizer.eval(), [pattern], tmp_path / "cache", batch_size=1)
    assert counts["written"] == 32 and len(list((tmp_path / "cache").glob("*.codes.jsonl"))) == len(shards)

    common = [f"tokenizer_checkpoint={tokenizer_run}", "loop.steps=2", f"data.understanding_shards=[{pattern}]",
              f"data.generation_shards=[{pattern}]", "data.text_to_image_text=[1.0, 2.0]"]
    _run("unified", tmp_path / "fly", *common)
    _run("unified", tmp_path / "cached", *common, f"data.codes_cache={tmp_path / 'cache'}")
    assert _losses(tmp_path / "cached") == pytest.approx(_losses(tmp_path / "fly"), rel=1e-6)
    saved = load_file(str(tmp_path / "fly" / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert not any(k.startswith("lavit.visual_tokenizer.") for k in saved)
    # The understanding merger started from the trained tokenizer's merger (and then trained).
    tok_saved = load_file(str(Path(latest_checkpoint_dir(str(tokenizer_run))) / "model.safetensors"))
    assert any(k.startswith("lavit.understanding_encoder.causal_encoder.") for k in saved)
    assert "tokenizer.causal_encoder.norm.weight" in tok_saved


@pytest.mark.parametrize("stage", ["unified", "pixel_decoder"])
def test_downstream_stages_refuse_to_start_without_their_upstream_run(stage, tmp_path):
    from harness.errors import InputError

    # The mini presets too: a random tokenizer is only ever an explicit choice (tokenizer_checkpoint=random-init).
    with pytest.raises(InputError, match=r"tokenizer_checkpoint is not set.*python -m train tokenizer.*random-init"):
        _run(stage, tmp_path / "a")
    with pytest.raises(InputError, match=rf"tokenizer_checkpoint={tmp_path}/nope: no such file"):
        _run(stage, tmp_path / "b", f"tokenizer_checkpoint={tmp_path}/nope")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written


def test_activation_checkpointing_gives_the_same_losses_and_bf16_runs(tokenizer_run, tmp_path):
    _run("tokenizer", tmp_path / "ac", "loop.steps=2", "vq_start_step=2", "dist.activation_checkpointing=true")
    assert _losses(tmp_path / "ac") == pytest.approx(_losses(tokenizer_run)[:2], rel=1e-5)
    _run("tokenizer", tmp_path / "bf16", "loop.steps=1", "dist.precision=bf16")
    assert all(torch.isfinite(torch.tensor(_losses(tmp_path / "bf16"))))
