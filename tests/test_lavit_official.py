"""The released checkpoint layout: a tiny model written in exactly that layout loads strictly and round-trips;
wrong layouts fail with errors that name the path or the keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model.lavit.configuration import lavit_tiny
from model.lavit.checkpoints import load_for_eval
from model.lavit.eval_adapter import LavitEvalAdapter
from model.lavit.generation import ImageSampling, sample_image_tokens
from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig
from model.lavit.official import load_official_lavit, write_official_layout
from model.lavit.vocabulary import build_byte_text_tokenizer
from model.weights import CheckpointLayoutError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    # Make the LLM-tuned merger differ from the tokenizer's, so the override order is observable.
    with torch.no_grad():
        for p in model.understanding_encoder.parameters():
            p.add_(0.01)
        model.pixel_decoder.uncond_embeddings.normal_()
    tokenizer = build_byte_text_tokenizer()
    root = write_official_layout(
        model, tokenizer, tmp_path_factory.mktemp("ckpt") / "LaVIT-tiny", max_shard_params=2_000_000
    )
    return model, tokenizer, root


def copy_of(root, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


def test_layout_is_the_released_one(written):
    _, _, root = written
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    expected = {
        "language_model/config.json",
        "language_model/pytorch_model.bin.index.json",
        "language_model/visual_weight.bin",
        "visual_tokenizer/eva_vitg_psz14.bin",
        "visual_tokenizer/tokenizer_encoder.bin",
        "visual_tokenizer/tokenizer_decoder.bin",
        "pixel_decoding/uncond_embeddings.bin",
        "pixel_decoding/unet/config.json",
        "pixel_decoding/unet/diffusion_pytorch_model.bin",
        "pixel_decoding/vae/config.json",
        "pixel_decoding/vae/diffusion_pytorch_model.bin",
        "pixel_decoding/scheduler/scheduler_config.json",
        "lavit_config.yaml",  # our addition: the config of a model of any size
    }
    assert expected <= names
    shards = sorted(n for n in names if n.startswith("language_model/pytorch_model-"))
    assert len(shards) >= 2 and shards[-1].endswith(f"-of-{len(shards):05d}.bin")
    visual = torch.load(root / "language_model/visual_weight.bin", weights_only=True)
    assert {k.split(".")[0] for k in visual} == {"causal_encoder", "vit_proj"}
    assert json.loads((root / "language_model/config.json").read_text())["vocab_size"] == 32000 + 2 + 64


def test_strict_load_round_trips_weights_and_outputs(written):
    model, tokenizer, root = written
    loaded = load_official_lavit(root, lavit_tiny())
    assert loaded.report.ignored_keys == []
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # visual_weight.bin (not the tokenizer's merger) drives the understanding path
    assert not torch.equal(
        loaded.model.understanding_encoder.vit_proj.weight, loaded.model.visual_tokenizer.vit_proj.weight
    )
    ids = tokenizer("a photo of", add_special_tokens=False)["input_ids"]
    sampling = ImageSampling(top_k=10, temperature=1.0, cfg_scale=1.5, min_new_tokens=2, max_new_tokens=8)
    outs = [
        sample_image_tokens(m, [torch.tensor(ids)], sampling, generator=torch.Generator().manual_seed(0))[0].tolist()
        for m in (model, loaded.model)
    ]
    assert outs[0] == outs[1]
    r0 = LavitEvalAdapter(model, tokenizer, "a")
    r1 = load_for_eval(root, config=lavit_tiny()).adapter
    assert r1.model_id.startswith("lavit:")
    assert r0.score_text(["The cat"], [" sat"]) == pytest.approx(r1.score_text(["The cat"], [" sat"]), abs=1e-5)


def test_missing_folder_and_file_name_the_path(written, tmp_path):
    _, _, root = written
    broken = copy_of(root, tmp_path)
    shutil.rmtree(broken / "pixel_decoding")
    with pytest.raises(FileNotFoundError, match=r"pixel_decoding"):
        load_official_lavit(broken, lavit_tiny())
    broken2 = tmp_path / "copy2"
    shutil.copytree(root, broken2)
    (broken2 / "language_model" / "visual_weight.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"visual_weight"):
        load_official_lavit(broken2, lavit_tiny())


def test_wrong_keys_are_named(written, tmp_path):
    _, _, root = written
    broken = copy_of(root, tmp_path)
    path = broken / "language_model" / "visual_weight.bin"
    state = torch.load(path, weights_only=True)
    state.pop("vit_proj.bias")
    state["causal_encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(
        CheckpointLayoutError,
        match=r"missing keys: 1 \(vit_proj.bias\).*unexpected keys: 1 \(causal_encoder.extra.weight\)",
    ):
        load_official_lavit(broken, lavit_tiny())


def test_llm_shard_missing_key_and_config_mismatch(written, tmp_path):
    _, _, root = written
    broken = copy_of(root, tmp_path)
    index = json.loads((broken / "language_model/pytorch_model.bin.index.json").read_text())
    shard = broken / "language_model" / index["weight_map"]["lm_head.weight"]
    state = torch.load(shard, weights_only=True)
    state.pop("lm_head.weight")
    torch.save(state, shard)
    with pytest.raises(CheckpointLayoutError, match=r"missing keys: 1 \(lm_head.weight\)"):
        load_official_lavit(broken, lavit_tiny())
    config = json.loads((root / "language_model/config.json").read_text())
    config["num_hidden_layers"] = 3
    broken2 = tmp_path / "copy2"
    shutil.copytree(root, broken2)
    (broken2 / "language_model/config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"num_hidden_layers.*\(3, 2\)"):
        load_official_lavit(broken2, lavit_tiny())


def test_write_refuses_an_existing_directory(written, tmp_path):
    model, tokenizer, _ = written
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        write_official_layout(model, tokenizer, tmp_path / "exists")


def test_pixel_decoder_initialises_from_a_stable_diffusion_folder(written, tmp_path):
    """§3.3: the U-Net starts from SD 1.5. A folder with unet/, vae/, scheduler/ (here: the tiny ones) is read
    through `pixel_decoder.init_from`; a folder without vae/ is an error naming it."""
    import dataclasses

    from model.lavit.pixel_decoder import PixelDecoder

    model, _, root = written
    sd = tmp_path / "sd15"
    shutil.copytree(root / "pixel_decoding", sd)
    (sd / "uncond_embeddings.bin").unlink()
    cfg = lavit_tiny()
    cfg = dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, init_from=str(sd)))
    fresh = LavitForCausalLM(LavitHFConfig.from_lavit_config(cfg))
    a, b = model.pixel_decoder.unet.state_dict(), fresh.pixel_decoder.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(fresh.pixel_decoder.uncond_embeddings.abs().sum()) == 0.0  # SD ships no LaVIT uncond rows
    shutil.rmtree(sd / "vae")
    with pytest.raises(FileNotFoundError, match=r"sd15 has no vae/"):
        PixelDecoder.from_stable_diffusion(cfg.pixel_decoder, sd, context_dim=cfg.tokenizer.unet_context_dim)
