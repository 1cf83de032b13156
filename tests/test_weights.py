"""model/weights.py: reading weight files (single, twin, sharded with and without an index) and the strict check."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from model.weights import (
    CheckpointLayoutError,
    check_state_dict,
    read_sharded_state_dict,
    read_state_dict,
    resolve_file,
    sharded_weight_files,
    strip_prefix,
)

EXPECTED = {"a.weight": torch.Size([2, 3]), "a.bias": torch.Size([2]), "b.weight": torch.Size([4])}


def tensors(shapes) -> dict[str, torch.Tensor]:
    return {k: torch.arange(torch.Size(s).numel(), dtype=torch.float32).reshape(s) for k, s in shapes.items()}


def test_strict_check_names_missing_unexpected_and_misshaped_keys():
    state = tensors({"a.weight": (3, 2), "b.weight": (4,), "c.weight": (1,)})
    with pytest.raises(CheckpointLayoutError) as err:
        check_state_dict("ckpt/x.bin", state, EXPECTED, what="the toy model")
    assert str(err.value) == (
        "ckpt/x.bin: weights do not match the toy model; missing keys: 1 (a.bias); unexpected keys: 1 (c.weight); "
        "shape mismatches: 1 (a.weight: file (3, 2) vs model (2, 3))"
    )
    assert check_state_dict("ok", tensors(EXPECTED), EXPECTED) == []


def test_required_subset_and_tolerated_suffixes():
    state = tensors({"a.weight": (2, 3), "layers.0.rotary_emb.inv_freq": (2,)})
    ignored = check_state_dict("f", state, EXPECTED, required={"a.weight"}, tolerated_suffixes=("rotary_emb.inv_freq",))
    assert ignored == ["layers.0.rotary_emb.inv_freq"] and set(state) == {"a.weight"}  # dropped in place
    with pytest.raises(CheckpointLayoutError, match=r"missing keys: 2 \(a.bias, b.weight\)"):
        check_state_dict("f", tensors({"a.weight": (2, 3)}), EXPECTED)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sets(st.sampled_from(sorted(EXPECTED))), st.sets(st.sampled_from(["x", "y.z", "w"])), st.data())
def test_check_passes_exactly_when_keys_and_shapes_match(present, extra, data):
    shapes = {k: EXPECTED[k] for k in present}
    wrong = data.draw(st.sets(st.sampled_from(sorted(present)))) if present else set()
    shapes.update({k: (7,) for k in wrong})
    shapes.update({k: (1,) for k in extra})
    state = tensors(shapes)
    if present == set(EXPECTED) and not extra and not wrong:
        check_state_dict("f", state, EXPECTED)
        return
    with pytest.raises(CheckpointLayoutError) as err:
        check_state_dict("f", state, EXPECTED)
    message = str(err.value)
    for label, keys in (("missing", set(EXPECTED) - present), ("unexpected", extra), ("shape mismatches", wrong)):
        assert (f"{label}{' keys' if label != 'shape mismatches' else ''}: {len(keys)} (" in message) == bool(keys)


def test_error_lists_the_first_keys_and_the_count():
    expected = {f"k{i:02d}": torch.Size([1]) for i in range(20)}
    with pytest.raises(CheckpointLayoutError, match=r"missing keys: 20 \(k00, k01, .*k07, \.\.\. \(\+12 more\)\)"):
        check_state_dict("f", {}, expected)


def test_read_state_dict_bin_safetensors_twin_and_wrapper(tmp_path):
    state = tensors(EXPECTED)
    save_file(state, str(tmp_path / "w.safetensors"))
    assert resolve_file(tmp_path / "w.bin") == tmp_path / "w.safetensors"  # the twin of a missing .bin
    loaded = read_state_dict(tmp_path / "w.bin")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"state_dict": state}, tmp_path / "wrapped.bin")
    assert read_state_dict(tmp_path / "wrapped.bin").keys() == state.keys()
    torch.save({"a": [1, 2]}, tmp_path / "bad.bin")
    with pytest.raises(CheckpointLayoutError, match=r"bad.bin: expected a flat dict of tensors"):
        read_state_dict(tmp_path / "bad.bin")
    with pytest.raises(FileNotFoundError, match=r"absent.bin \(nor absent.safetensors\)"):
        read_state_dict(tmp_path / "absent.bin")


def test_sharded_folders_with_and_without_index(tmp_path):
    state = tensors(EXPECTED)
    first, second = {"a.weight": state["a.weight"], "a.bias": state["a.bias"]}, {"b.weight": state["b.weight"]}
    plain = tmp_path / "plain"  # pytorch_model-*.bin shards, no index
    plain.mkdir()
    torch.save(first, plain / "pytorch_model-00001-of-00002.bin")
    torch.save(second, plain / "pytorch_model-00002-of-00002.bin")
    (plain / "visual_weight.bin").write_bytes(b"not a shard")  # other .bin files are not LLM shards
    assert [p.name for p in sharded_weight_files(plain)] == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    ]
    assert read_sharded_state_dict(plain).keys() == state.keys()

    indexed = tmp_path / "indexed"  # model-*.safetensors with an index
    indexed.mkdir()
    save_file(first, str(indexed / "model-00001-of-00002.safetensors"))
    save_file(second, str(indexed / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map["b.weight"] = "model-00002-of-00002.safetensors"
    (indexed / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    merged = read_sharded_state_dict(indexed)
    assert merged.keys() == state.keys() and all(torch.equal(merged[k], state[k]) for k in state)
    (indexed / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.index.json lists shards that do not exist"):
        sharded_weight_files(indexed)

    twice = tmp_path / "twice"
    twice.mkdir()
    save_file(first, str(twice / "model-00001-of-00002.safetensors"))
    save_file(first, str(twice / "model-00002-of-00002.safetensors"))
    with pytest.raises(CheckpointLayoutError, match=r"model-00002-of-00002.safetensors: keys also in .*00001"):
        read_sharded_state_dict(twice)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no weights in .*empty: expected \*.safetensors or pytorch_model"):
        sharded_weight_files(tmp_path / "empty")


def test_strip_prefix_only_when_every_key_has_it():
    assert strip_prefix({"encoder.a": 1, "encoder.b": 2}, "encoder.") == {"a": 1, "b": 2}
    assert strip_prefix({"encoder.a": 1, "b": 2}, "encoder.") == {"encoder.a": 1, "b": 2}
    assert strip_prefix({}, "encoder.") == {}
