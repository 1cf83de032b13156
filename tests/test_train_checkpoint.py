"""Checkpoints (atomic, latest valid, weights_only), the LR schedule, Table 9 presets, the launcher's config plumbing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from harness.config import get_preset, to_dict
from train.checkpoint import CheckpointError, CheckpointManager, capture_rng_state, restore_rng_state
from train.config import OptimConfig
from train.distributed import init_distributed, shutdown_distributed
from train.trainer import build_optimizer, lr_factor


@pytest.fixture
def world_of_one():
    info = init_distributed("cpu")
    yield info
    shutdown_distributed()


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    model[0].weight.requires_grad_(True)
    optimizer = build_optimizer({"visual": list(model.named_parameters())}, OptimConfig(lr=1e-2, warmup_steps=0))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_load_roundtrip_and_latest_valid(tmp_path, world_of_one):
    manager = CheckpointManager(tmp_path / "ck", world_of_one, keep_last=2)
    model, optimizer = _model_and_optimizer(0)
    for step in (2, 4, 6):
        manager.save(step, model, optimizer, {"scheduler": {"x": step}, "task": {}}, {"data": {"pos": step}, "rng": capture_rng_state()})
    assert [s for s, _ in manager.valid_checkpoints()] == [4, 6]  # keep_last=2 pruned step 2
    # A half-written newer checkpoint (no manifest) and a stray temp dir are ignored.
    (tmp_path / "ck" / "step_00000008").mkdir()
    (tmp_path / "ck" / "step_00000008" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "ck" / ".step_00000010.tmp").mkdir()
    # A manifest naming a missing file is incomplete too.
    (tmp_path / "ck" / "step_00000012").mkdir()
    (tmp_path / "ck" / "step_00000012" / "manifest.json").write_text(json.dumps({"step": 12, "world_size": 1, "files": ["model.safetensors"]}))
    assert manager.latest().name == "step_00000006"

    fresh, fresh_opt = _model_and_optimizer(1)
    loaded = manager.load(manager.latest(), fresh, fresh_opt)
    assert loaded.step == 6 and loaded.rank_state["data"] == {"pos": 6} and loaded.trainer_state["scheduler"] == {"x": 6}
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), fresh_opt.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # Every .pt file loads with weights_only=True.
    for name in ("optimizer.pt", "trainer.pt", "rank_00000.pt"):
        torch.load(manager.latest() / name, weights_only=True)


def test_excluded_prefixes_are_not_written(tmp_path, world_of_one):
    model, optimizer = _model_and_optimizer(0)
    manager = CheckpointManager(tmp_path, world_of_one, exclude_prefixes=("0.",))
    path = manager.save(1, model, optimizer, {"scheduler": {}, "task": {}}, {"data": {}, "rng": capture_rng_state()})
    from safetensors.torch import load_file

    assert sorted(load_file(str(path / "model.safetensors"))) == ["2.bias", "2.weight"]


def test_another_world_size_resumes_only_a_shared_data_position(tmp_path, world_of_one):
    """A checkpoint of 2 processes resumed by 1: refused when the processes had their own data positions (they
    cannot be merged), accepted when every process had the same one (a stream each reads whole and strides)."""
    model, optimizer = _model_and_optimizer(0)
    manager = CheckpointManager(tmp_path, world_of_one)
    path = manager.save(1, model, optimizer, {"scheduler": {}, "task": {}}, {"data": {"pos": 0}, "rng": capture_rng_state()})
    meta = json.loads((path / "manifest.json").read_text())
    meta["world_size"] = 2
    (path / "manifest.json").write_text(json.dumps(meta))
    torch.save({"data": {"pos": 1}, "rng": capture_rng_state()}, path / "rank_00001.pt")
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1.*data.partition=sequence"):
        manager.load(path, model, optimizer)
    torch.save({"data": {"pos": 0}, "rng": capture_rng_state()}, path / "rank_00001.pt")
    loaded = manager.load(path, model, optimizer)
    assert loaded.saved_world_size == 2 and loaded.rank_state["data"] == {"pos": 0}


def test_rng_state_roundtrip():
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(torch.load(_saved(state), weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def _saved(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_lr_schedule_warmup_then_cosine():
    optim = OptimConfig(warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, optim, total_steps=12) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # monotone decay
    assert lr_factor(12, optim, 12) == pytest.approx(0.1)


def test_weight_decay_skips_biases_and_group_lrs_apply():
    model = nn.Linear(3, 3)
    opt = build_optimizer({"llm": [("w", model.weight)], "visual": [("b", model.bias)]}, OptimConfig(lr=1.5e-4, group_lr={"llm": 5e-5}, weight_decay=0.1))
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert groups == {"llm/decay": (5e-5, 0.1), "visual/no_decay": (1.5e-4, 0.0)}
    with pytest.raises(ValueError, match="vision"):
        build_optimizer({"llm": [("w", model.weight)]}, OptimConfig(group_lr={"vision": 1.0}))


def test_paper_presets_are_table_9():
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)

    tok = get_preset("train/tokenizer", "paper")
    assert (tok.optim.betas, tok.optim.eps, tok.optim.lr, tok.optim.warmup_steps, tok.optim.weight_decay) == ((0.9, 0.99), 1e-6, 2e-4, 4000, 0.01)
    assert (tok.loop.steps, tok.loop.global_batch_size, tok.dist.precision, tok.optim.grad_clip) == (50_000, 2048, "bf16", 1.0)
    assert (tok.tokenizer.keep_ratio, tok.tokenizer.ratio_loss_weight, tok.tokenizer.codebook_size) == (pytest.approx(1 / 3), 2.0, 16384)
    uni = get_preset("train/unified", "paper")
    assert (uni.optim.betas, uni.optim.eps, uni.optim.lr, uni.optim.group_lr) == ((0.9, 0.95), 1e-6, 1.5e-4, {"llm": 5e-5})
    assert (uni.optim.warmup_steps, uni.optim.weight_decay, uni.optim.grad_clip, uni.optim.schedule) == (2000, 0.1, 1.0, "cosine")
    assert (uni.loop.steps, uni.loop.global_batch_size, uni.seq_len, uni.dist.precision) == (20_000, 2048, 2048, "bf16")
    assert uni.data.text_to_image_text == (2.0, 1.0)
    assert uni.data.text_weights == {"c4": 0.8, "github": 0.04, "wikipedia": 0.04, "books": 0.04, "arxiv": 0.04, "stackexchange": 0.04}
    assert get_preset("train/pixel_decoder", "paper").loop.steps == 20_000


def test_launcher_parses_and_the_job_config_roundtrips():
    from harness.config import from_dict
    from train.__main__ import build_parser
    from train.registry import stage_config_class
    from train.slurm import SlurmOptions, sweep_points

    args = build_parser().parse_args(
        ["unified", "--config", "paper", "--output-dir", "x", "--set", "optim.lr=3e-4", "--cluster", "slurm", "--gpus-per-node", "0", "--tasks-per-node", "2"]
    )
    from harness.config import config_from_args

    cfg = config_from_args(args, "train/unified")
    assert cfg.optim.lr == 3e-4 and args.cluster == "slurm"
    assert from_dict(stage_config_class("unified"), to_dict(cfg)) == cfg  # what a SLURM task rebuilds
    assert SlurmOptions(gpus_per_node=0, tasks_per_node=2).tasks() == 2
    assert SlurmOptions(gpus_per_node=8).tasks() == 8
    assert sweep_points(["a=1,2", "b=x"]) == [["a=1", "b=x"], ["a=2", "b=x"]]


def test_any_truncation_or_changed_byte_is_named(tmp_path_factory, world_of_one):
    """Property: cutting any checkpoint file short, or changing any one of its bytes, makes the verification fail
    with a message naming that file; the intact checkpoint verifies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from train.checkpoint import verify_checkpoint

    model, optimizer = _model_and_optimizer(0)
    manager = CheckpointManager(tmp_path_factory.mktemp("ck"), world_of_one)
    path = manager.save(3, model, optimizer, {"scheduler": {}, "task": {}}, {"data": {}, "rng": capture_rng_state()})
    assert verify_checkpoint(path) is None
    names = sorted(json.loads((path / "manifest.json").read_text())["files"])
    originals = {n: (path / n).read_bytes() for n in names}

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(name=st.sampled_from(names), where=st.floats(0, 1, exclude_max=True), truncate=st.booleans(), delta=st.integers(1, 255))
    def check(name, where, truncate, delta):
        data = originals[name]
        at = int(where * len(data))
        damaged = data[:at] if truncate else data[:at] + bytes([(data[at] + delta) % 256]) + data[at + 1 :]
        (path / name).write_bytes(damaged)
        try:
            problem = verify_checkpoint(path)
        finally:
            (path / name).write_bytes(data)
        assert problem is not None and problem.startswith(f"{path / name}: "), problem
        assert ("truncated" in problem) if truncate else ("SHA-256" in problem)

    check()
