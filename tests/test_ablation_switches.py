"""Every LaVIT ablation switch of the paper's tables trains through the stage launcher (`run_stage`, mini presets).

    Table 3a  model.ablation.visual_objective=regression (+ regression_loss mse|cosine)   stage 2
    Table 7a  model.ablation.understanding_input=quantized                                 stage 2
    Table 7b  model.ablation.freeze_llm=true                                               stage 2
    Table 3b  tokenizer.fixed_length=true                                                  stages 1a -> 1b, 2
    Table 6   tokenizer.merger_attention=bidirectional                                     stages 1a -> 1b, 2
    Table 8   tokenizer.use_merger=false                                                   stages 1a -> 1b, 2

Tokenizer-side switches run as the real chain: stage 1a trains a tokenizer with the switch, and stages 1b and 2
load that checkpoint (strictly: a merger-less checkpoint does not fit a merger-ful model) with the same switch.
Each run checks finite losses, the switch in the run's config.yaml, and the switch's effect on what trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.config import get_preset, resolve

N_PATCHES = 16  # mini tokenizer: 56 px / patch 14
TOKENIZER_SWITCHES = {  # Tables 3b, 6, 8: key under the tokenizer config -> value
    "fixed_length": ("fixed_length", True),
    "bidirectional": ("merger_attention", "bidirectional"),
    "no_merger": ("use_merger", False),
}
# Stage 2: more image-text documents than the preset's 1:2 so every short run has both kinds.
UNIFIED_COMMON = ("loop.steps=3", "loop.checkpoint_every=3", "data.text_to_image_text=[1.0, 2.0]")
# The LLM-side switches do not depend on a trained tokenizer: they opt in to a random one explicitly.
LLM_SIDE = (*UNIFIED_COMMON, "tokenizer_checkpoint=random-init")


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(stage: str, out: Path, *overrides: str) -> dict:
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)
    from train.stages import run_stage

    summary = run_stage(stage, resolve(get_preset(f"train/{stage}", "mini"), overrides=list(overrides)), out)
    assert summary["finished"]
    return summary


def _metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    return records


def _config(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def _last_checkpoint(out: Path) -> Path:
    return sorted((out / "checkpoints").glob("step_*"))[-1]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(_last_checkpoint(out) / "model.safetensors"))


def _optimized(out: Path) -> list[str]:
    """Names of the parameters the optimizer holds state for (i.e. that trained)."""
    state = torch.load(_last_checkpoint(out) / "optimizer.pt", weights_only=True)["state"]
    assert state
    return list(state)


def _total(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records)


def _merger(tokenizer_cfg: dict, weights: dict[str, torch.Tensor], prefix: str):
    """The trained token merger of a run: built from its config.yaml, weights from its checkpoint."""
    from harness.config import from_dict
    from model.lavit.tokenizer import build_tokenizer
    from model.lavit.tokenizer_config import VisualTokenizerConfig

    merger = build_tokenizer(from_dict(VisualTokenizerConfig, tokenizer_cfg)).causal_encoder
    merger.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return merger.eval()


@torch.no_grad()
def _reach(merger, width: int) -> float:
    """How much merged token 0 moves when the last (kept) patch changes. Patch 1 is dropped, so the cross-attention
    has something to attend; a causal merger then lets token 0 see the last patch only through the eps/N weight
    of masked keys, a bidirectional one through its full attention weight."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, N_PATCHES, width, generator=g)
    keep = torch.ones(1, N_PATCHES)
    keep[0, 1] = 0.0
    moved = features.clone()
    moved[0, -1] += 3.0 * torch.randn(width, generator=g)
    return float((merger(moved, keep)[0, 0] - merger(features, keep)[0, 0]).abs().max())


def _check_merger_effect(switch: str, tokenizer_cfg: dict, weights: dict[str, torch.Tensor], prefix: str) -> None:
    merger = _merger(tokenizer_cfg, weights, prefix)
    width = tokenizer_cfg["encoder_width"]
    if switch == "bidirectional":
        assert not merger.causal
        reach = _reach(merger, width)
        merger.causal = True  # the same trained weights under the causal scope
        assert reach > 100 * _reach(merger, width) and reach > 1e-4
    if switch == "no_merger":
        assert len(merger.blocks) == 0 and not any(".blocks." in k for k in weights if k.startswith(prefix))
        assert _reach(merger, width) == 0.0  # only the final norm: each token is its own patch


# ---------------------------------------------------------------------------------------------
# Tables 3b, 6, 8: stage 1a with the switch, then stages 1b and 2 on that tokenizer.


@pytest.fixture(scope="module", params=sorted(TOKENIZER_SWITCHES))
def stage1a(request, tmp_path_factory) -> tuple[str, Path]:
    switch = request.param
    key, value = TOKENIZER_SWITCHES[switch]
    out = tmp_path_factory.mktemp(f"stage1a_{switch}")
    _run("tokenizer", out, "loop.steps=3", "loop.checkpoint_every=3", "vq_start_step=1", f"tokenizer.{key}={json.dumps(value)}")
    return switch, out


def test_tokenizer_stage_trains_with_the_switch(stage1a):
    switch, out = stage1a
    key, value = TOKENIZER_SWITCHES[switch]
    records = _metrics(out)
    assert _config(out)["tokenizer"][key] == value
    weights = _weights(out)
    if switch == "fixed_length":  # Table 3b: no selector, all N patches are tokens, no ratio term
        assert all(r["keep_ratio"] == 1.0 and r["num_tokens"] == N_PATCHES and r["ratio_loss"] == 0.0 for r in records)
        assert not any(k.startswith("tokenizer.token_predictor.") for k in weights)
    else:
        assert all(0.0 < r["keep_ratio"] < 1.0 for r in records)  # the selector drops patches
    _check_merger_effect(switch, _config(out)["tokenizer"], weights, "tokenizer.causal_encoder.")


def test_pixel_decoder_stage_trains_on_the_switched_tokenizer(stage1a, tmp_path):
    switch, tok_run = stage1a
    key, value = TOKENIZER_SWITCHES[switch]
    _run("pixel_decoder", tmp_path, f"tokenizer_checkpoint={tok_run}", "loop.steps=2", f"model.tokenizer.{key}={json.dumps(value)}")
    records = _metrics(tmp_path)
    assert _config(tmp_path)["model"]["tokenizer"][key] == value
    assert all(k.startswith(("pixel_decoder.unet.", "tokenizer.decoder.unet_proj.")) for k in _optimized(tmp_path))  # U-Net + context projection
    tokens_per_image = [r["kept_tokens"] for r in records]  # metric_sums: mean over the step's images
    if switch == "fixed_length":
        assert tokens_per_image == [N_PATCHES] * len(records)
    else:
        assert all(0 < t < N_PATCHES for t in tokens_per_image)


def test_unified_stage_trains_on_the_switched_tokenizer(stage1a, tmp_path):
    switch, tok_run = stage1a
    key, value = TOKENIZER_SWITCHES[switch]
    summary = _run("unified", tmp_path, f"tokenizer_checkpoint={tok_run}", *UNIFIED_COMMON, f"model.tokenizer.{key}={json.dumps(value)}")
    records = _metrics(tmp_path)
    cfg = _config(tmp_path)
    assert cfg["model"]["tokenizer"][key] == value
    assert summary["data"]["image_text/drawn_understanding"] > 0 and summary["data"]["image_text/drawn_generation"] > 0
    image_docs, image_tokens = _total(records, "image_docs"), _total(records, "image_tokens")
    assert image_docs > 0
    if switch == "fixed_length":
        assert image_tokens == N_PATCHES * image_docs
    else:
        assert image_tokens < N_PATCHES * image_docs
    optimized = _optimized(tmp_path)
    assert any(k.startswith("lavit.language_model.") for k in optimized)
    assert any(k.startswith("lavit.understanding_encoder.vit_proj.") for k in optimized)
    _check_merger_effect(switch, cfg["model"]["tokenizer"], _weights(tmp_path), "lavit.understanding_encoder.causal_encoder.")


# ---------------------------------------------------------------------------------------------
# Tables 3a, 7a, 7b: LLM-side switches of stage 2.


@pytest.fixture(scope="module")
def unified_baseline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unified_baseline")
    _run("unified", out, *LLM_SIDE)
    return out


def test_unified_baseline_classifies_every_visual_slot(unified_baseline):
    records = _metrics(unified_baseline)
    assert _total(records, "regression_targets") == 0 and all(r["loss_regression"] == 0.0 for r in records)
    assert _total(records, "visual_targets") == _total(records, "image_tokens") > 0
    assert all(r["loss"] == pytest.approx(r["loss_ce"], rel=1e-6) for r in records)


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_regression_objective_regresses_every_visual_slot(loss, unified_baseline, tmp_path):
    """Table 3a: visual slots regress the next visual embedding (no code CE), text keeps its CE; both logged."""
    _run("unified", tmp_path, *LLM_SIDE, "model.ablation.visual_objective=regression", f"model.ablation.regression_loss={loss}")
    records = _metrics(tmp_path)
    ablation = _config(tmp_path)["model"]["ablation"]
    assert (ablation["visual_objective"], ablation["regression_loss"]) == ("regression", loss)
    baseline = _metrics(unified_baseline)
    # The same documents as the classification run (same seed and data): its code targets become regression targets,
    # so the normaliser (supervised targets) is unchanged.
    assert [r["units"] for r in records] == [r["units"] for r in baseline]
    assert _total(records, "visual_targets") == 0
    assert _total(records, "regression_targets") == _total(records, "image_tokens") == _total(baseline, "visual_targets")
    per_slot = []
    for r in records:
        assert r["loss"] == pytest.approx(r["loss_ce"] + r["loss_regression"], rel=1e-5)
        assert r["ce_targets"] + r["regression_targets"] == r["units"]
        if r["regression_targets"]:
            per_slot.append(r["regression_sum"] / r["regression_targets"])
            assert 0.0 < per_slot[-1] < (4.0 if loss == "mse" else 2.0) and r["loss_regression"] > 0.0
    assert len(per_slot) >= 2 and per_slot[-1] < per_slot[0]  # the head learns (mse 1.01 -> 0.93, cosine 0.95 -> 0.70)
    assert any(k.startswith("lavit.regression_head.") for k in _optimized(tmp_path))


def test_quantized_understanding_input_freezes_the_understanding_merger(unified_baseline, tmp_path):
    """Table 7a: [image; text] reads the LLM's own code embeddings; the understanding merger and vit_proj feed
    nothing and stay out of the optimizer."""
    summary = _run("unified", tmp_path, *LLM_SIDE, "model.ablation.understanding_input=quantized")
    records = _metrics(tmp_path)
    assert _config(tmp_path)["model"]["ablation"]["understanding_input"] == "quantized"
    assert summary["data"]["image_text/drawn_understanding"] > 0
    optimized = _optimized(tmp_path)
    assert not any(k.startswith("lavit.understanding_encoder.") for k in optimized)
    assert any(k.startswith("lavit.language_model.model.embed_tokens.") for k in optimized)
    # Same documents and targets as the continuous run, different visual inputs -> different losses.
    baseline = _metrics(unified_baseline)
    assert [r["units"] for r in records] == [r["units"] for r in baseline]
    assert [r["loss"] for r in records] != pytest.approx([r["loss"] for r in baseline], rel=1e-6)


def test_frozen_llm_trains_only_the_understanding_merger_and_vit_proj(tmp_path, capsys):
    """Table 7b: the LLM's weights are bitwise unchanged and never reach the optimizer; the preset's group_lr for
    "llm" is no error (the frozen group is skipped with an info line)."""
    import train.lavit.config  # noqa: F401
    from train.lavit.unified import UnifiedTask
    from train.distributed import DistInfo
    from train.trainer import seed_everything

    overrides = [*LLM_SIDE, "model.ablation.freeze_llm=true"]
    _run("unified", tmp_path / "run", *overrides)
    assert "group 'llm' has no trainable parameters (frozen); skipped" in capsys.readouterr().out
    _metrics(tmp_path / "run")
    assert _config(tmp_path / "run")["model"]["ablation"]["freeze_llm"] is True
    assert _config(tmp_path / "run")["optim"]["group_lr"] == {"llm": 5e-4}

    # The initial model, exactly as the trainer built it (same seed before build_model).
    cfg = resolve(get_preset("train/unified", "mini"), overrides=overrides)
    seed_everything(cfg.loop.seed)
    initial = UnifiedTask(cfg, tmp_path / "init").build_model(DistInfo(0, 1, 0, torch.device("cpu"), "gloo"))
    assert not any(p.requires_grad for p in initial.lavit.language_model.parameters())
    start = initial.state_dict()
    trained = _weights(tmp_path / "run")
    llm = [k for k in trained if k.startswith("lavit.language_model.")]
    assert llm and all(torch.equal(trained[k], start[k]) for k in llm)
    optimized = _optimized(tmp_path / "run")
    assert optimized and all(k.startswith("lavit.understanding_encoder.") for k in optimized)
    assert any(k.startswith("lavit.understanding_encoder.causal_encoder.") for k in optimized)
    assert any(k.startswith("lavit.understanding_encoder.vit_proj.") for k in optimized)
    changed = [k for k in trained if k.startswith("lavit.understanding_encoder.") and not torch.equal(trained[k], start[k])]
    assert any(".vit_proj." in k for k in changed) and any(".causal_encoder." in k for k in changed)


def test_frozen_llm_with_quantized_input_is_refused_before_building():
    """Nothing would train (the LLM is frozen and the understanding path is bypassed): one clear error."""
    import train.lavit.config  # noqa: F401

    cfg = resolve(get_preset("train/unified", "mini"), overrides=["model.ablation.freeze_llm=true", "model.ablation.understanding_input=quantized"])
    with pytest.raises(ValueError, match="freeze_llm.*quantized"):
        cfg.model.validate()


def test_build_optimizer_skips_a_frozen_group_but_still_rejects_unknown_ones(capsys):
    from train.config import OptimConfig
    from train.trainer import build_optimizer

    frozen, trained = torch.nn.Linear(2, 2).requires_grad_(False), torch.nn.Linear(2, 2)
    groups = {"llm": list(frozen.named_parameters()), "visual": list(trained.named_parameters())}
    optimizer = build_optimizer(groups, OptimConfig(lr=1e-3, group_lr={"llm": 5e-5}))
    assert sorted(g["name"] for g in optimizer.param_groups) == ["visual/decay", "visual/no_decay"]
    assert "group 'llm' has no trainable parameters" in capsys.readouterr().out
    with pytest.raises(ValueError, match="names groups \\['vision'\\]"):
        build_optimizer(groups, OptimConfig(group_lr={"vision": 1.0}))
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer({"llm": groups["llm"]}, OptimConfig())
