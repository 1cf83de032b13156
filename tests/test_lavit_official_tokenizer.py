"""Loading the released ``visual_tokenizer/`` file layout (tiny tokenizer written in exactly that layout)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from harness.config import get_preset
from model.lavit.eva_vit import EvaAttention
from model.lavit.official_tokenizer import (
    EVA_FILE,
    TOKENIZER_DECODER_FILE,
    TOKENIZER_ENCODER_FILE,
    load_official_visual_tokenizer,
    write_official_layout,
)
from model.lavit.tokenizer import DynamicVisualTokenizer
from model.weights import CheckpointLayoutError


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg():
    return dataclasses.replace(get_preset("lavit_tokenizer", "tiny"), init_std=0.2)


@pytest.fixture(scope="module")
def tok(cfg):
    torch.manual_seed(0)
    return DynamicVisualTokenizer(cfg).eval()


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(a: DynamicVisualTokenizer, b: DynamicVisualTokenizer) -> None:
    x = pixels()
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with torch.no_grad():
        oa = a.tokenize(x, selection="sampled", generator=gen())
        ob = b.tokenize(x, selection="sampled", generator=gen())
        assert torch.equal(oa.keep_mask, ob.keep_mask)
        torch.testing.assert_close(oa.merged, ob.merged, atol=0, rtol=0)
        assert all(torch.equal(p, q) for p, q in zip(oa.codes, ob.codes))
        assert all(torch.equal(p, q) for p, q in zip(oa.llm_embeds, ob.llm_embeds))
        torch.testing.assert_close(a.decoder_context(oa.codes), b.decoder_context(ob.codes), atol=0, rtol=0)


def test_official_layout_round_trip(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([EVA_FILE, TOKENIZER_ENCODER_FILE, TOKENIZER_DECODER_FILE])
    # The files hold exactly the released key names.
    eva = torch.load(folder / EVA_FILE, weights_only=True)
    assert "cls_token" in eva and "blocks.0.attn.q_bias" in eva and "head.weight" in eva
    assert "blocks.0.attn.qkv.bias" not in eva
    middle = torch.load(folder / TOKENIZER_ENCODER_FILE, weights_only=True)
    assert {k.split(".")[0] for k in middle} == {
        "token_predictor",
        "causal_encoder",
        "quantize",
        "encode_task_layer",
        "vit_proj",
    }
    dec = torch.load(folder / TOKENIZER_DECODER_FILE, weights_only=True)
    assert {"pos_embed", "query_embed", "in_proj.weight", "unet_proj.weight"} <= set(dec)
    assert "blocks.0.cross_attn.key.weight" in dec
    # Loads strictly (both the checkpoint root and the visual_tokenizer folder) and reproduces the outputs.
    for where in (tmp_path, folder):
        loaded = load_official_visual_tokenizer(where, cfg)
        assert_same_outputs(tok, loaded)
    assert not any(p.requires_grad for p in loaded.encoder.parameters())  # the ViT stays frozen after loading
    assert all(not t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))


def test_prefixed_encoder_keys_and_safetensors_twins(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path, encoder_in_tokenizer_file=True, safetensors=True)
    assert (folder / "eva_vitg_psz14.safetensors").is_file()
    # EVA file with an `encoder.` prefix is accepted too.
    from safetensors.torch import load_file, save_file

    eva = load_file(str(folder / "eva_vitg_psz14.safetensors"))
    save_file({f"encoder.{k}": v for k, v in eva.items()}, str(folder / "eva_vitg_psz14.safetensors"))
    assert_same_outputs(tok, load_official_visual_tokenizer(tmp_path, cfg))


def test_tokenizer_file_encoder_keys_load_after_eva(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path, encoder_in_tokenizer_file=True)
    middle = torch.load(folder / TOKENIZER_ENCODER_FILE, weights_only=True)
    middle["encoder.norm.weight"] = torch.full_like(middle["encoder.norm.weight"], 7.0)
    torch.save(middle, folder / TOKENIZER_ENCODER_FILE)
    loaded = load_official_visual_tokenizer(tmp_path, cfg)
    assert torch.all(loaded.encoder.norm.weight == 7.0)  # tokenizer weights are applied after the EVA file


def test_wrong_layout_names_missing_and_unexpected_keys(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path)
    middle = torch.load(folder / TOKENIZER_ENCODER_FILE, weights_only=True)
    del middle["vit_proj.weight"]
    del middle["causal_encoder.blocks.1.mlp.fc2.bias"]
    middle["visual_proj.weight"] = torch.zeros(1)
    torch.save(middle, folder / TOKENIZER_ENCODER_FILE)
    with pytest.raises(CheckpointLayoutError) as err:
        load_official_visual_tokenizer(tmp_path, cfg)
    message = str(err.value)
    assert TOKENIZER_ENCODER_FILE in message
    assert "missing keys: 2 (causal_encoder.blocks.1.mlp.fc2.bias, vit_proj.weight)" in message
    assert "unexpected keys: 1 (visual_proj.weight)" in message


def test_wrong_prefix_in_decoder_file_is_reported(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path)
    dec = torch.load(folder / TOKENIZER_DECODER_FILE, weights_only=True)
    torch.save({f"module.{k}": v for k, v in dec.items()}, folder / TOKENIZER_DECODER_FILE)
    with pytest.raises(CheckpointLayoutError, match=r"tokenizer_decoder\.bin.*missing keys: \d+ \(decoder\.blocks"):
        load_official_visual_tokenizer(tmp_path, cfg)


def test_shape_mismatch_and_missing_file(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path)
    bigger = dataclasses.replace(cfg, codebook_size=128)
    with pytest.raises(CheckpointLayoutError, match=r"quantize\.embedding\.weight: file \(64, 8\) vs model \(128, 8\)"):
        load_official_visual_tokenizer(tmp_path, bigger)
    (folder / EVA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="eva_vitg_psz14.bin"):
        load_official_visual_tokenizer(tmp_path, cfg)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official_visual_tokenizer(tmp_path / "absent", cfg)


def test_extra_weight_file_overrides_merger(tok, cfg, tmp_path):
    """The released understanding model loads `language_model/visual_weight.bin` on top (merger tuned with the LLM)."""
    write_official_layout(tok, tmp_path)
    extra = {"causal_encoder.norm.bias": torch.full((cfg.encoder_width,), 0.5)}
    torch.save(extra, tmp_path / "visual_weight.bin")
    loaded = load_official_visual_tokenizer(tmp_path, cfg, extra_weight_files=(tmp_path / "visual_weight.bin",))
    assert torch.all(loaded.causal_encoder.norm.bias == 0.5)
    torch.save({"not_a_key": torch.zeros(1)}, tmp_path / "bad.bin")
    with pytest.raises(CheckpointLayoutError, match="unexpected keys: 1 \\(not_a_key\\)"):
        load_official_visual_tokenizer(tmp_path, cfg, extra_weight_files=(tmp_path / "bad.bin",))


def test_without_decoder_file(tok, cfg, tmp_path):
    folder = write_official_layout(tok, tmp_path)
    (folder / TOKENIZER_DECODER_FILE).unlink()
    loaded = load_official_visual_tokenizer(tmp_path, cfg, load_decoder=False)
    with torch.no_grad():
        a, b = tok.tokenize(pixels()), loaded.tokenize(pixels())
    assert all(torch.equal(p, q) for p, q in zip(a.codes, b.codes))
    assert torch.isfinite(loaded.decode(b.codes)).all()


def test_eva_attention_matches_released_semantics():
    """q = x Wq + q_bias, k = x Wk (no bias), v = x Wv + v_bias; softmax((q * scale) k^T) v; then proj."""
    torch.manual_seed(0)
    attn = EvaAttention(dim=16, num_heads=2)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, 16)
    wq, wk, wv = attn.qkv.weight.chunk(3)
    heads = lambda t: t.reshape(2, 5, 2, 8).transpose(1, 2)  # noqa: E731
    q, k, v = heads(x @ wq.T + attn.q_bias), heads(x @ wk.T), heads(x @ wv.T + attn.v_bias)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(attn(x), attn.proj(expected), atol=1e-5, rtol=1e-5)


def test_command_line_tokenizes_images(tok, tmp_path, capsys):
    from PIL import Image

    from model.lavit.official_tokenizer import main

    write_official_layout(tok, tmp_path)
    image = tmp_path / "img.png"
    Image.new("RGB", (80, 60), color=(200, 30, 30)).save(image)
    main([str(tmp_path), str(image), "--config", "tiny", "--selection", "sampled", "--seed", "3"])
    printed = capsys.readouterr().out
    assert f"{image}:" in printed and "visual tokens of 16 patches" in printed
    grid = [line.strip() for line in printed.splitlines() if set(line.strip()) <= {"#", "."} and line.strip()]
    assert len(grid) == 4 and all(len(row) == 4 for row in grid)
    count = int(printed.split(": ")[1].split()[0])
    assert count == sum(row.count("#") for row in grid)
