"""The mini release (model/mini_release/): committed stand-ins that match their manifest, load through the loaders of
the real released weights, and whose recipe regenerates its first steps bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness.errors import InputError
from reproduce.mini_release import ENCODER, RELEASE_DIR, STAND_INS, encoder_state, prefix_sha256, read_manifest, release_file


def test_every_release_file_matches_its_manifest_and_the_release_is_small():
    manifest = read_manifest()
    assert set(manifest["parts"]) == {s.part for s in STAND_INS}
    total = 0
    for part, entry in manifest["parts"].items():
        path = release_file(part)  # checks the SHA-256
        assert path.name.endswith(f"-{entry['sha256'][:12]}.safetensors")  # a rebuilt stand-in renames downstream runs
        assert (RELEASE_DIR / f"CARD_{part}.md").is_file()
        total += path.stat().st_size
    assert total <= 25 * 2**20


def test_a_damaged_release_file_is_refused_by_name(tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(RELEASE_DIR, copy)
    entry = read_manifest(copy)["parts"]["encoder"]
    data = bytearray((copy / entry["file"]).read_bytes())
    data[-1] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(InputError, match=entry["file"]):
        release_file("encoder", copy)
    (copy / entry["file"]).unlink()
    with pytest.raises(InputError, match="missing"):
        release_file("encoder", copy)


def test_the_encoder_loads_through_stage_1a_encoder_path_as_eva_clip_weights_do():
    from model.lavit.checkpoints import load_encoder_weights
    from model.lavit.tokenizer import build_tokenizer
    from model.lavit.tokenizer_config import tiny
    from reproduce.mini_chain import STAGE_1A

    path = release_file("encoder")
    tokenizer = build_tokenizer(tiny())
    load_encoder_weights(tokenizer, str(path))  # the loader of eva_vitg_psz14.bin: bare keys, strict
    state = encoder_state(path)
    loaded = tokenizer.encoder.state_dict()
    assert set(state) == set(loaded) and all(torch.equal(state[k], loaded[k]) for k in state)
    # Every mini chain's stage 1a starts from this very file.
    assert f"encoder_path={{release}}/{path.name}" in STAGE_1A.overrides


def test_the_encoder_recipe_regenerates_its_first_steps_bit_for_bit(monkeypatch):
    """Bit for bit against the prefix recorded for this machine's CPU kernels: float results depend on the thread
    count and on the kernel set (AVX2 and AVX-512 round differently; both are recorded, each measured on its kind)."""
    from harness.cpu_kernels import kernel_set

    entry = read_manifest()["parts"]["encoder"]
    monkeypatch.setenv("OMP_NUM_THREADS", str(entry["threads"]))  # CPU float reductions depend on the thread count
    recorded = entry["prefix_sha256"]
    assert kernel_set() in recorded, f"no prefix recorded for {kernel_set()} CPU kernels (only {sorted(recorded)})"
    assert prefix_sha256(ENCODER) == recorded[kernel_set()]
