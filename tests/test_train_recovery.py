"""Runs that cannot be corrupted by ordinary accidents: a damaged checkpoint file, a changed config on resume, a
missing upstream checkpoint, a model too big for the machine, files unreadable by the group.

Stage 1a (tokenizer) at mini size, 2 steps with a checkpoint after each and the quantizer switched on at step 1
(so the EMA codebook and k-means state are part of what a checkpoint must carry).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from harness.config import get_preset, resolve
from harness.errors import InputError

OVERRIDES = ["loop.steps=2", "loop.checkpoint_every=1", "vq_start_step=1", "kmeans_images=4"]
FILES = ("model.safetensors", "optimizer.pt", "trainer.pt", "rank_00000.pt")


def _config(*extra: str):
    import train.lavit.config  # noqa: F401  (registers the LaVIT stage presets)

    return resolve(get_preset("train/tokenizer", "mini"), overrides=[*OVERRIDES, *extra])


def _run(out: Path, *extra: str) -> dict:
    from train.stages import run_stage

    return run_stage("tokenizer", _config(*extra), out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try:
        summary = _run(out)
    finally:
        os.umask(old)
    assert summary["finished"] and summary["resumed_from_step"] == 0
    return out


def assert_same_optimizer_state(path: Path, reference: bytes) -> None:
    """Every AdamW moment and step count bit-identical (the file's bytes may differ: a resumed optimizer lists its
    state in parameter order, a fresh one in first-gradient order)."""
    import io

    import torch

    got, want = torch.load(path, weights_only=True), torch.load(io.BytesIO(reference), weights_only=True)
    assert got["param_groups"] == want["param_groups"]
    assert set(got["state"]) == set(want["state"]) and want["state"]
    for key, state in want["state"].items():
        for name, tensor in state.items():
            assert torch.equal(got["state"][key][name], tensor), (key, name)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_records_size_and_checksum_and_files_follow_the_umask(finished_run):
    import hashlib

    ck = finished_run / "checkpoints" / "step_00000002"
    manifest = json.loads((ck / "manifest.json").read_text())
    assert set(manifest["files"]) == set(FILES)
    for name, entry in manifest["files"].items():
        data = (ck / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # Written under umask 022: group- and world-readable, like any file the user writes (not mkstemp's 0600).
    for path in [*ck.iterdir(), finished_run / "config.yaml", finished_run / "run.json", finished_run / "metrics.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_atomic_writes_use_the_process_umask(tmp_path):
    from harness.io import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", FILES)
def test_truncated_file_falls_back_to_the_previous_checkpoint_bit_identically(name, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    final = run / "checkpoints" / "step_00000002"
    reference = {n: (final / n).read_bytes() for n in ("model.safetensors", "optimizer.pt")}
    damaged = final / name
    truncated = damaged.read_bytes()[: damaged.stat().st_size // 2]
    damaged.write_bytes(truncated)

    summary = _run(run)
    assert summary["resumed_from_step"] == 1 and summary["finished"]
    out = capsys.readouterr().out
    assert f"step_00000002/{name}:" in out and "truncated" in out and "resuming from step_00000001" in out
    # Moved aside, not deleted: the damaged file is still there, byte for byte.
    kept = run / "checkpoints" / "corrupt" / "step_00000002" / name
    assert kept.read_bytes() == truncated
    # Step 2 retrained from step 1: the same weights (bytes) and optimizer state (tensors) as the uninterrupted run.
    assert (final / "model.safetensors").read_bytes() == reference["model.safetensors"]
    assert_same_optimizer_state(final / "optimizer.pt", reference["optimizer.pt"])
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2]


def test_no_valid_checkpoint_stops_and_touches_nothing(finished_run, tmp_path):
    from train.checkpoint import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for step in (1, 2):
        f = run / "checkpoints" / f"step_{step:08d}" / "optimizer.pt"
        f.write_bytes(f.read_bytes()[:100])
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=r"no valid checkpoint .*step_00000002/optimizer.pt: 100 bytes.*step_00000001/optimizer.pt.*Nothing was moved"):
        _run(run)
    assert _snapshot(run) == before


def test_changed_config_on_resume_is_refused_and_config_yaml_kept(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    with pytest.raises(InputError, match=r"changed keys: optim\.lr: 0\.001 -> 0\.5\. Resume with the run's config"):
        _run(run, "optim.lr=0.5")
    with pytest.raises(InputError, match=r"tokenizer\.codebook_size: 64 -> 128"):
        _run(run, "tokenizer.codebook_size=128")
    assert _snapshot(run) == before  # config.yaml, run.json, checkpoints: untouched

    # The step budget may change: recorded, and the run continues from its last checkpoint.
    summary = _run(run, "loop.steps=3")
    assert summary["resumed_from_step"] == 2 and summary["last_step"] == 3
    assert summary["config_changes"][0]["changes"] == {"loop.steps": [2, 3]}
    assert "steps: 3" in (run / "config.yaml").read_text()


def test_strict_loading_names_the_keys_that_do_not_fit(finished_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from train.checkpoint import CheckpointError, file_digest

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    final = run / "checkpoints" / "step_00000002"
    state = load_file(str(final / "model.safetensors"))
    state["tokenizer.extra.weight"] = state[next(iter(state))].clone()
    save_file(state, str(final / "model.safetensors"))
    manifest = json.loads((final / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = file_digest(final / "model.safetensors")  # a consistent, wrong checkpoint
    (final / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"does not fit this model: 0 keys missing .* 1 unexpected .*tokenizer\.extra\.weight"):
        _run(run, "loop.steps=3")


@pytest.mark.parametrize("stage", ["unified", "pixel_decoder"])
def test_paper_preset_without_upstream_fails_in_seconds_before_any_model(stage, tmp_path, monkeypatch):
    import train.lavit.config  # noqa: F401
    import model.summary
    from train.stages import run_stage, task_class

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the inputs were checked")

    monkeypatch.setattr(task_class(stage), "build_model", no_model)
    monkeypatch.setattr(model.summary, "build_meta_model", no_model)
    cfg = get_preset(f"train/{stage}", "paper")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"^tokenizer_checkpoint is not set: .*--set tokenizer_checkpoint="):
        run_stage(stage, cfg, tmp_path / "run")
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_fit_is_refused_before_allocating(tmp_path, monkeypatch):
    import train.lavit.config  # noqa: F401
    import train.stages as stages
    from train.stages import check_memory, task_class

    monkeypatch.setattr(stages, "_available_memory_bytes", lambda device: (32 * 2**30, "available RAM"))
    cfg = get_preset("train/unified", "paper")
    task = task_class("unified")(cfg, tmp_path)
    trainable, frozen = task.parameter_counts()  # shapes on the meta device
    assert 6.5e9 < trainable < 8e9 and frozen > 1e9  # the LLM (+ merger) trains; the EVA tokenizer is frozen
    with pytest.raises(InputError, match=r"needs at least \d+\.\d GiB per process .* this machine has 32\.0 GiB of available RAM"):
        check_memory(task, cfg, world_size=1)
    check_memory(task, cfg, world_size=64)  # FSDP over 64 processes: ~2 GiB each of trainable state
    mini = get_preset("train/unified", "mini")
    check_memory(task_class("unified")(mini, tmp_path), mini, world_size=1)
