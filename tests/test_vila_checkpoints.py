"""VILA checkpoints (model/vila/checkpoints.py): the released single-directory and per-component layouts, our own
save_pretrained directory and vila_* run directories load strictly; wrong files are named."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.config import to_dict
from model.vila.checkpoints import detect_layout, load_for_eval, load_released, write_released_layout
from model.vila.configuration import IMAGE_TOKEN_INDEX, ProjectorConfig, vila_tiny
from model.vila.modeling_vila import VilaForCausalLM
from model.weights import CheckpointLayoutError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(projector: str = "mlp2x_gelu"):
    cfg = vila_tiny()
    cfg.llm.vocab_size = 320  # the byte tokenizer's 259 ids fit
    cfg.projector = ProjectorConfig(type=projector, transformer_heads=2)
    return cfg


def tiny_model(projector: str = "mlp2x_gelu", seed: int = 0) -> VilaForCausalLM:
    torch.manual_seed(seed)
    return VilaForCausalLM(tiny_config(projector)).eval()


def tokenizer():
    from model.lavit.vocabulary import build_byte_text_tokenizer

    return build_byte_text_tokenizer()


def assert_same_weights(a: VilaForCausalLM, b: VilaForCausalLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def same_outputs(a: VilaForCausalLM, b: VilaForCausalLM) -> None:
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 40, 41]])
    images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(ids, images=images).logits, b(ids, images=images).logits)


@pytest.fixture(scope="module")
def original() -> VilaForCausalLM:
    return tiny_model()


@pytest.fixture(scope="module")
def single(tmp_path_factory, original) -> Path:
    return write_released_layout(original, tokenizer(), tmp_path_factory.mktemp("single") / "vila", layout="single")


@pytest.fixture(scope="module")
def components(tmp_path_factory, original) -> Path:
    return write_released_layout(original, tokenizer(), tmp_path_factory.mktemp("comp") / "vila", layout="components")


def test_single_directory_layout_has_the_released_names(single):
    config = json.loads((single / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["mm_projector_type"] == "mlp2x_gelu"
    keys = load_file(str(single / "model.safetensors")).keys()
    assert "model.mm_projector.0.weight" in keys and "model.mm_projector.2.bias" in keys
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" in keys
    assert (single / "tokenizer.json").is_file()


@pytest.mark.parametrize("layout", ["single", "components"])
def test_released_layouts_load_strictly_into_the_same_model(layout, single, components, original):
    path = single if layout == "single" else components
    assert detect_layout(path) == (layout, path)
    loaded = load_for_eval(path)
    assert loaded.source == "released" and loaded.model_id == f"vila:{path.resolve()}"
    ours = original.vila_config  # the released configs carry architecture only (no attention backend, no
    assert loaded.config.vision == ours.vision  # sizes of the unused transformer projector)
    assert dataclasses.replace(loaded.config.llm, attn_implementation="eager") == ours.llm
    assert loaded.config.projector.type == ours.projector.type
    assert_same_weights(loaded.adapter.model, original)
    same_outputs(loaded.adapter.model, original)
    assert not any(p.requires_grad for p in loaded.adapter.model.parameters())
    from PIL import Image

    assert len(loaded.adapter.answer([Image.new("RGB", (16, 16))], ["what?"], max_new_tokens=2)) == 1


def test_component_layout_files(components):
    assert set(load_file(str(components / "mm_projector" / "model.safetensors"))) == {
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"
    }  # fmt: skip
    assert all(k.startswith("vision_model.") for k in load_file(str(components / "vision_tower" / "model.safetensors")))
    assert json.loads((components / "vision_tower" / "config.json").read_text())["image_size"] == 16


@pytest.mark.parametrize("projector", ["linear", "downsample_2x2", "transformer"])
def test_every_projector_round_trips_through_the_single_layout(projector, tmp_path):
    model = tiny_model(projector, seed=2)
    path = write_released_layout(model, tokenizer(), tmp_path / "v", layout="single")
    if projector == "downsample_2x2":
        assert json.loads((path / "config.json").read_text())["mm_projector_type"] == "mlp_downsample"
    loaded, _, config = load_released(path)
    assert config.projector.type == projector
    assert_same_weights(loaded, model)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_missing_and_unexpected_keys_are_named_as_the_file_names_them(single, tmp_path):
    path = _copy(single, tmp_path)
    state = load_file(str(path / "model.safetensors"))
    del state["model.mm_projector.2.weight"]
    state["model.mm_projector.9.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointLayoutError) as err:
        load_for_eval(path)
    message = str(err.value)
    assert "missing keys: 1 (model.mm_projector.2.weight)" in message
    assert "unexpected keys: 1 (model.mm_projector.9.weight)" in message
    assert str(path) in message


def test_shape_mismatch_in_a_component_is_named(components, tmp_path):
    path = _copy(components, tmp_path)
    file = path / "mm_projector" / "model.safetensors"
    state = load_file(str(file))
    state["layers.2.weight"] = torch.zeros(5, 5)
    save_file(state, str(file))
    with pytest.raises(CheckpointLayoutError, match=r"mm_projector.*layers\.2\.weight: file \(5, 5\) vs model \(32, 32\)"):
        load_for_eval(path)


def test_torch_bin_shards_load_with_weights_only(single, original, tmp_path):
    path = _copy(single, tmp_path)
    state = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    loaded, _, _ = load_released(path)
    assert_same_weights(loaded, original)


def test_bad_layouts_are_named(single, components, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_for_eval(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointLayoutError, match="is not a VILA checkpoint"):
        load_for_eval(tmp_path / "empty")
    partial = _copy(components, tmp_path)
    shutil.rmtree(partial / "mm_projector")
    with pytest.raises(CheckpointLayoutError, match=r"without \['mm_projector'\]"):
        load_for_eval(partial)
    intern = _copy(components, tmp_path / "intern")  # VILA 1.5's InternViT tower is not supported (SigLIP is)
    vision = json.loads((intern / "vision_tower" / "config.json").read_text())
    (intern / "vision_tower" / "config.json").write_text(json.dumps({**vision, "model_type": "intern_vit_6b"}))
    with pytest.raises(CheckpointLayoutError, match="model_type='intern_vit_6b'"):
        load_for_eval(intern)
    bad = tmp_path / "bad"
    shutil.copytree(single, bad)
    config = json.loads((bad / "config.json").read_text())
    config["mm_projector_type"] = "qformer"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match="mm_projector_type='qformer'"):
        load_for_eval(bad)
    config["model_type"] = "llama"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match="model_type='llama'"):
        load_for_eval(bad)


def test_save_pretrained_directory_loads_strictly(original, tmp_path):
    path = tmp_path / "ours"
    original.save_pretrained(str(path))
    tokenizer().save_pretrained(str(path / "tokenizer"))
    assert detect_layout(path) == ("vila", path)
    loaded = load_for_eval(path)
    assert_same_weights(loaded.adapter.model, original)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A vila_* run directory as the stages write it: config.yaml (model section + text_tokenizer) and a verified
    checkpoint of the whole model (VilaForCausalLM.state_dict() names) written by the trainer's CheckpointManager."""
    import yaml

    from train.checkpoint import CheckpointManager
    from train.distributed import DistInfo

    root = tmp_path_factory.mktemp("run")
    cfg = tiny_config()
    cfg.ablation.visual_expert = True  # an ablation's extra weights are part of the run's model
    torch.manual_seed(4)
    model = VilaForCausalLM(cfg)
    tok_dir = root / "tokenizer"
    tokenizer().save_pretrained(str(tok_dir))
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(cfg), "text_tokenizer": str(tok_dir)}))
    (run / "run.json").write_text(json.dumps({"stage": "vila_sft"}))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    manager = CheckpointManager(run / "checkpoints", info)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    manager.save(2, model, opt, {"step": 2}, {})
    return run, model


def test_run_directory_loads_its_newest_verified_checkpoint(run_dir):
    run, model = run_dir
    layout, where = detect_layout(run)
    assert layout == "run" and where.name == "step_00000002"
    loaded = load_for_eval(run)
    assert loaded.model_id == f"vila:{run.resolve()}@step=2" and loaded.source == "run"
    assert loaded.config.ablation.visual_expert
    assert_same_weights(loaded.adapter.model, model)
    # One step directory itself loads too.
    assert load_for_eval(where).model_id == loaded.model_id


def test_run_of_another_stage_is_refused(run_dir, tmp_path):
    run, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "run.json").write_text(json.dumps({"stage": "unified"}))
    with pytest.raises(CheckpointLayoutError, match="stage 'unified'"):
        load_for_eval(copy)


def test_bfloat16_load_keeps_rotary_float32_and_runs(single):
    loaded = load_for_eval(single, dtype="bfloat16")
    model = loaded.adapter.model
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert model.vision_tower.clip.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    from PIL import Image

    scores = loaded.adapter.score_text(["a"], [" b"], images=[Image.new("RGB", (16, 16))])
    assert scores[0] < 0
