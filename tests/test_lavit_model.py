"""LaVIT unified model (tiny preset): sequence building, padding, the one-CE loss, ablation switches, own format."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from harness.config import ConfigError, get_preset, resolve
from model.lavit.configuration import LavitConfig, lavit_tiny
from model.lavit.modeling_lavit import IGNORE_INDEX, LavitForCausalLM, LavitHFConfig
from model.lavit.vocabulary import LavitVocabulary


def tiny_llm_only() -> LavitConfig:
    """lavit-tiny without the pixel decoder (not needed here; keeps each build well under a second)."""
    cfg = lavit_tiny()
    return dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, enabled=False))


def build(config: LavitConfig | None = None, seed: int = 0) -> LavitForCausalLM:
    torch.manual_seed(seed)
    return LavitForCausalLM(LavitHFConfig.from_lavit_config(config or tiny_llm_only())).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LavitForCausalLM:
    return build()


def pixels(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 56, 56, generator=g)


def test_vocabulary_layout_matches_release():
    v = LavitVocabulary(32000, 16384)
    assert (v.img_start_id, v.img_end_id, v.visual_offset, v.size) == (32000, 32001, 32002, 48386)
    assert v.code_to_id(torch.tensor([0, 16383])).tolist() == [32002, 48385]
    assert v.id_to_code(torch.tensor([32002, 48385])).tolist() == [0, 16383]
    with pytest.raises(ValueError, match="not visual ids"):
        v.id_to_code(torch.tensor([31999]))
    with pytest.raises(ValueError, match=r"\[0, 16384\)"):
        v.code_to_id(torch.tensor([16384]))
    assert get_preset("lavit", "lavit-7b").vocab_size == 48386


def test_presets_and_validation_name_the_fields():
    tiny = get_preset("lavit", "lavit-tiny")
    tiny.validate()
    broken = resolve(tiny, overrides=["llm.hidden_size=128"])
    with pytest.raises(ValueError, match=r"tokenizer.llm_hidden_size=64 != llm.hidden_size=128"):
        broken.validate()
    with pytest.raises(ConfigError, match="ablation.visual_objective"):
        resolve(tiny, overrides=["ablation.visual_objective=foo"])
    for name in ("lavit-7b", "lavit-clip-l", "lavit-tiny"):
        get_preset("lavit", name).validate()


def test_understanding_sequence_is_img_features_endimg_prompt_left_padded(model):
    v = model.vocab
    h = model.lavit_config.llm.hidden_size
    feats = [torch.randn(3, h), torch.randn(0, h)]  # second image: zero kept tokens
    prompts = [torch.tensor([10, 11]), torch.tensor([12, 13, 14, 15])]
    batch = model.collate([model.understanding_item(f, p) for f, p in zip(feats, prompts)])
    emb = model.embed_ids
    # row 0: [IMG] f0 f1 f2 [/IMG] 10 11  (length 7) padded on the left to 7 -> no padding
    # row 1: [IMG] [/IMG] 12 13 14 15     (length 6) -> one pad on the left
    assert batch.inputs_embeds.shape == (2, 7, h)
    assert batch.attention_mask.tolist() == [[1] * 7, [0] + [1] * 6]
    assert batch.position_ids.tolist() == [list(range(7)), [0, 0, 1, 2, 3, 4, 5]]
    row = batch.inputs_embeds[0]
    torch.testing.assert_close(row[0], emb(torch.tensor(v.img_start_id)))
    torch.testing.assert_close(row[1:4], feats[0])
    torch.testing.assert_close(row[4], emb(torch.tensor(v.img_end_id)))
    torch.testing.assert_close(row[5:], emb(prompts[0]))  # the prompt carries no BOS
    pad = emb(torch.tensor(model.lavit_config.llm.eos_token_id))
    torch.testing.assert_close(batch.inputs_embeds[1, 0], pad)  # released: pads are </s> embeddings
    torch.testing.assert_close(batch.inputs_embeds[1, 1], emb(torch.tensor(v.img_start_id)))
    torch.testing.assert_close(batch.inputs_embeds[1, 2], emb(torch.tensor(v.img_end_id)))


def test_left_padding_does_not_change_a_row(model):
    h = model.lavit_config.llm.hidden_size
    g = torch.Generator().manual_seed(1)
    short = model.understanding_item(torch.randn(2, h, generator=g), torch.tensor([20, 21]))
    long = model.understanding_item(torch.randn(9, h, generator=g), torch.tensor([22, 23, 24]))
    alone = model.collate([short])
    padded = model.collate([long, short])
    with torch.no_grad():
        a = model(alone.inputs_embeds, alone.attention_mask, alone.position_ids).logits[0]
        b = model(padded.inputs_embeds, padded.attention_mask, padded.position_ids).logits[1, -a.shape[0] :]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_image_with_zero_kept_tokens_has_no_nan(model):
    n = model.lavit_config.tokenizer.num_patches
    keep = torch.zeros(2, n, dtype=torch.bool)
    keep[0, :5] = True
    enc = model.encode_images(pixels(2), keep_mask=keep)
    assert [e.shape[0] for e in enc.llm_embeds] == [5, 0]
    assert [c.numel() for c in enc.codes] == [5, 0]
    items = [
        model.understanding_item(e, torch.tensor([30, 31]), c, append_eos=True)
        for e, c in zip(enc.llm_embeds, enc.codes)
    ]
    out = model.loss_on(items)
    assert torch.isfinite(out.loss)
    assert torch.isfinite(out.logits).all()


def test_understanding_labels_supervise_codes_then_text(model):
    v = model.vocab
    enc = model.encode_images(pixels(1))
    codes = enc.codes[0]
    item = model.understanding_item(enc.llm_embeds[0], torch.tensor([40, 41]), codes, append_eos=True)
    expected = [v.img_start_id, *(32002 + codes).tolist(), v.img_end_id, 40, 41, model.lavit_config.llm.eos_token_id]
    assert item.labels.tolist() == expected
    assert item.embeds.shape[0] == len(expected)


def test_one_cross_entropy_over_text_and_image_targets(model):
    v = model.vocab
    text = torch.tensor([50, 51, 52])
    codes = torch.tensor([0, 7, 63, 7])
    gen = model.generation_item(text, codes)
    assert gen.labels.tolist() == [50, 51, 52, 32000, 32002, 32009, 32065, 32009, 32001]
    enc = model.encode_images(pixels(1, seed=3))
    und = model.understanding_item(enc.llm_embeds[0], torch.tensor([60, 61]), enc.codes[0], append_eos=True)
    txt = model.text_item(torch.tensor([1, 70, 71, 2]))
    with torch.no_grad():
        out = model.loss_on([gen, und, txt])
        batch = model.collate([gen, und, txt])
        logits = model(batch.inputs_embeds, batch.attention_mask, batch.position_ids).logits
    # By hand: every supervised next-token target of the three rows, one mean.
    flat_logits, flat_targets = [], []
    for row in range(3):
        for t in range(batch.labels.shape[1] - 1):
            target = int(batch.labels[row, t + 1])
            if target != IGNORE_INDEX:
                flat_logits.append(logits[row, t])
                flat_targets.append(target)
    manual = F.cross_entropy(torch.stack(flat_logits), torch.tensor(flat_targets))
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)
    visual_targets = [t for t in flat_targets if t >= v.visual_offset]
    assert len(visual_targets) == codes.numel() + enc.codes[0].numel()


def test_loss_backward_reaches_llm_and_understanding_merger_not_tokenizer():
    model = build().train()
    enc = model.encode_images(pixels(2))
    items = [
        model.understanding_item(e, torch.tensor([5, 6]), c, append_eos=True) for e, c in zip(enc.llm_embeds, enc.codes)
    ]
    model.loss_on(items).loss.backward()
    assert model.language_model.model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.understanding_encoder.vit_proj.weight.grad is not None
    assert all(p.grad is None for p in model.visual_tokenizer.parameters())
    groups = model.parameter_groups()
    assert groups["llm"] and groups["visual"]


def test_frozen_llm_ablation_trains_only_the_merger():
    cfg = dataclasses.replace(tiny_llm_only(), ablation=dataclasses.replace(tiny_llm_only().ablation, freeze_llm=True))
    model = build(cfg)
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert all(p.requires_grad for p in model.understanding_encoder.parameters())
    assert model.parameter_groups()["llm"] == []


def test_quantized_input_ablation_reads_code_embedding_rows():
    cfg = tiny_llm_only()
    cfg = dataclasses.replace(cfg, ablation=dataclasses.replace(cfg.ablation, understanding_input="quantized"))
    model = build(cfg)
    enc = model.encode_images(pixels(2))
    for embeds, codes in zip(enc.llm_embeds, enc.codes):
        torch.testing.assert_close(embeds, model.embed_ids(codes + 32002))


def test_regression_ablation_regresses_next_visual_embedding():
    cfg = tiny_llm_only()
    cfg = dataclasses.replace(cfg, ablation=dataclasses.replace(cfg.ablation, visual_objective="regression"))
    model = build(cfg).train()
    enc = model.encode_images(pixels(1), need_codes=True)
    item = model.generation_item(torch.tensor([5, 6]), enc.codes[0], continuous_features=enc.kept_features[0])
    k = enc.kept_features[0].shape[0]
    # text, [IMG] and [/IMG] keep CE targets; the k visual slots are regression targets instead.
    assert item.labels.tolist() == [5, 6, 32000] + [IGNORE_INDEX] * k + [32001]
    assert int(item.regression_mask.sum()) == k
    und = model.understanding_item(
        enc.llm_embeds[0], torch.tensor([7]), enc.codes[0], continuous_features=enc.kept_features[0]
    )
    assert und.labels.tolist() == [IGNORE_INDEX] * (k + 1) + [32001, 7]  # no code CE in the regression variant
    assert int(und.regression_mask.sum()) == k
    out = model.loss_on([item, und])
    assert out.regression_loss is not None and out.ce_loss is not None
    torch.testing.assert_close(out.loss, out.ce_loss + out.regression_loss)
    out.loss.backward()
    assert model.regression_head.weight.grad is not None and model.regression_head.weight.grad.abs().sum() > 0


def test_tokenizer_side_ablations_build_and_run():
    base = tiny_llm_only()
    n = base.tokenizer.num_patches
    fixed = build(dataclasses.replace(base, tokenizer=dataclasses.replace(base.tokenizer, fixed_length=True)))
    assert [e.shape[0] for e in fixed.encode_images(pixels(2)).llm_embeds] == [n, n]
    for tok_cfg in (
        dataclasses.replace(base.tokenizer, use_merger=False),
        dataclasses.replace(base.tokenizer, merger_attention="bidirectional"),
    ):
        model = build(dataclasses.replace(base, tokenizer=tok_cfg))
        enc = model.encode_images(pixels(1))
        item = model.understanding_item(enc.llm_embeds[0], torch.tensor([5]), enc.codes[0])
        assert torch.isfinite(model.loss_on([item]).loss)
    no_merger = build(dataclasses.replace(base, tokenizer=dataclasses.replace(base.tokenizer, use_merger=False)))
    assert len(no_merger.understanding_encoder.causal_encoder.blocks) == 0


def test_own_format_round_trip(tmp_path):
    model = build(lavit_tiny())  # with the pixel decoder: diffusers modules inside a PreTrainedModel
    model.save_pretrained(tmp_path / "lavit")
    assert (tmp_path / "lavit" / "model.safetensors").is_file()
    loaded = LavitForCausalLM.from_pretrained(tmp_path / "lavit").eval()
    assert loaded.lavit_config == model.lavit_config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # non-persistent buffers (rotary inv_freq) are rebuilt correctly: same outputs
    item = model.understanding_item(torch.randn(3, model.lavit_config.llm.hidden_size), torch.tensor([5, 6, 7]))
    with torch.no_grad():
        torch.testing.assert_close(model.loss_on([item]).logits, loaded.loss_on([item]).logits)
