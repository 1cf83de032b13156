"""VILA's model (model/vila): interleaving, projectors, freezing per stage, visual expert, LoRA, generation,
conversation templates, the eval adapter, and the paper presets' parameter counts on the meta device."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.config import get_preset, resolve
from model.vila.configuration import IGNORE_INDEX, IMAGE_TOKEN_INDEX, ProjectorConfig, VilaConfig, VisionConfig, vila_tiny
from model.vila.modeling_vila import VilaForCausalLM, build_vila
from model.vila.projectors import Projector, space_to_channel_2x2

pytestmark = pytest.mark.usefixtures("one_thread")
IMG = IMAGE_TOKEN_INDEX


def tiny(**ablation) -> VilaConfig:
    cfg = vila_tiny()
    cfg.ablation = dataclasses.replace(cfg.ablation, **ablation)
    return cfg


def model_of(cfg: VilaConfig, seed: int = 0) -> VilaForCausalLM:
    torch.manual_seed(seed)
    return VilaForCausalLM(cfg).eval()


def pixels(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g)


@pytest.fixture(scope="module")
def model() -> VilaForCausalLM:
    return model_of(vila_tiny())


# --- interleaving ------------------------------------------------------------------------------------------


def test_image_features_land_exactly_at_placeholders_and_their_labels_are_ignored(model):
    ids = torch.tensor([[1, 5, IMG, 6, 7, IMG, 8], [1, IMG, 9, 10, 11, 12, 13]])
    labels = ids.clamp(min=0)
    images = pixels(3)
    n = model.tokens_per_image
    out = model.prepare_multimodal(ids, None, labels, images)
    feats = model.encode_images(images)
    embed = model.get_input_embeddings()
    emb, lab, vis = out["inputs_embeds"], out["labels"], out["visual_mask"]
    assert emb.shape == (2, 5 + 2 * n, 32)
    # Row 0: <s> 5 [image 0] 6 7 [image 1] 8
    torch.testing.assert_close(emb[0, 2 : 2 + n], feats[0])
    torch.testing.assert_close(emb[0, 4 + n : 4 + 2 * n], feats[1])
    text_pos = [0, 1, 2 + n, 3 + n, 4 + 2 * n]
    torch.testing.assert_close(emb[0, text_pos], embed(torch.tensor([1, 5, 6, 7, 8])))
    assert lab[0, text_pos].tolist() == [1, 5, 6, 7, 8]
    assert (lab[0, vis[0]] == IGNORE_INDEX).all() and int(vis[0].sum()) == 2 * n
    # Row 1: <s> [image 2] 9..13, then right padding (attention 0, label -100)
    torch.testing.assert_close(emb[1, 1 : 1 + n], feats[2])
    assert lab[1, 1 + n : 6 + n].tolist() == [9, 10, 11, 12, 13]
    assert out["attention_mask"][1].sum() == 6 + n and (lab[1, 6 + n :] == IGNORE_INDEX).all()
    assert out["position_ids"][1, : 6 + n].tolist() == list(range(6 + n))


def test_a_padded_row_computes_what_it_computes_alone(model):
    alone_ids = torch.tensor([[1, IMG, 9, 10]])
    imgs = pixels(3)
    alone = model(alone_ids, images=imgs[2:]).logits[0]
    # In a batch, left-padded, behind a row with one image more: same logits on its real positions.
    batch = torch.tensor([[1, IMG, 5, IMG, 6, 7], [0, 0, 1, IMG, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    out = model(batch, attention_mask=mask, images=imgs).logits[1]
    torch.testing.assert_close(out[: len(alone)], alone, atol=1e-5, rtol=1e-5)


def test_placeholder_and_image_counts_must_agree(model):
    with pytest.raises(ValueError, match="2 image placeholders .* but 1 images"):
        model(torch.tensor([[1, IMG, IMG]]), images=pixels(1))
    with pytest.raises(ValueError, match="padded position"):
        model(torch.tensor([[IMG, 1, 2]]), attention_mask=torch.tensor([[0, 1, 1]]), images=pixels(1))


def test_text_only_batch_equals_the_plain_llama(model):
    ids = torch.tensor([[1, 4, 5, 6]])
    torch.testing.assert_close(model(ids).logits, model.language_model(ids).logits)


def test_loss_is_supervised_only_on_text_labels(model):
    ids = torch.tensor([[1, 5, IMG, 6, 7]])
    images = pixels(1)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IMG, 6, 7]])  # a label at the placeholder is dropped too
    out = model(ids, labels=labels, images=images)
    n = model.tokens_per_image
    logp = torch.log_softmax(out.logits[0], -1)
    # Targets: 6 predicted from the last visual position (2 + n - 1), 7 from position 2 + n.
    expected = -(logp[1 + n, 6] + logp[2 + n, 7]) / 2
    torch.testing.assert_close(out.loss, expected)


# --- projectors ---------------------------------------------------------------------------------------------


def test_space_to_channel_follows_the_released_downsample_block_order():
    # Expected: VILA 1.5 llava/model/multimodal_projector/base_projector.py, DownSampleBlock.flat_square on a 4 x 4
    # grid holding its own index: view(n, 4, 2, 2c) pairs columns, permute(0, 2, 1, 3) transposes, view(n, 2, 2, 4c)
    # pairs rows -- cell (i, j) holds (2i,2j) (2i,2j+1) (2i+1,2j) (2i+1,2j+1), and the cells come column by column.
    grid = torch.arange(16.0).view(1, 16, 1)
    out = space_to_channel_2x2(grid)
    assert out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [8, 9, 12, 13], [2, 3, 6, 7], [10, 11, 14, 15]]


def test_downsample_pads_odd_sides_with_zeros():
    # flat_square: an odd side gets a zero row (dim 1) / column (dim 2) first; 3 x 3 values 1..9 -> 4 x 4
    grid = torch.arange(1.0, 10.0).view(1, 9, 1)
    out = space_to_channel_2x2(grid)
    assert out[0].tolist() == [[1, 2, 4, 5], [7, 8, 0, 0], [3, 0, 6, 0], [9, 0, 0, 0]]


@pytest.mark.parametrize(
    "kind, image_size, tokens",
    [("linear", 16, 16), ("mlp2x_gelu", 16, 16), ("transformer", 16, 16), ("downsample_2x2", 16, 4), ("downsample_2x2", 20, 9)],
)
def test_projector_shapes(kind, image_size, tokens):
    cfg = vila_tiny()
    cfg.vision.image_size = image_size
    cfg.projector = ProjectorConfig(type=kind, transformer_heads=2)
    assert cfg.tokens_per_image == tokens
    proj = Projector(cfg.projector, cfg.vision, 48)
    assert proj(torch.randn(3, cfg.vision_tokens, 32)).shape == (3, tokens, 48)
    m = model_of(cfg)
    assert m.encode_images(torch.randn(2, 3, image_size, image_size)).shape == (2, tokens, 32)


def test_downsample_projector_layers_are_layernorm_linear_gelu_linear():
    cfg = vila_tiny()
    cfg.projector = ProjectorConfig(type="downsample_2x2")
    names = {k: tuple(v.shape) for k, v in Projector(cfg.projector, cfg.vision, 48).state_dict().items()}
    assert names == {"layers.1.weight": (128,), "layers.1.bias": (128,), "layers.2.weight": (48, 128),
                     "layers.2.bias": (48,), "layers.4.weight": (48, 48), "layers.4.bias": (48,)}  # fmt: skip


# --- freezing -----------------------------------------------------------------------------------------------


def _step(model: VilaForCausalLM) -> dict[str, torch.Tensor]:
    """One AdamW step on the LM loss; returns the parameters before it."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.tensor([[1, IMG, 5, 6, 7, 8]])
    model.train()
    model(ids, labels=ids.clamp(min=0), images=pixels(1)).loss.backward()
    opt.step()
    model.eval()
    return before


def _changed(model, before) -> set[str]:
    return {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}


@pytest.mark.parametrize(
    "stage, train_llm, moving",
    [(0, None, {"mm_projector"}), (1, None, {"mm_projector", "language_model"}), (1, False, {"mm_projector"}),
     (2, None, {"mm_projector", "language_model"})],  # fmt: skip
)
def test_frozen_parameters_do_not_move(stage, train_llm, moving):
    m = model_of(vila_tiny())
    m.set_trainable(stage, train_llm=train_llm)
    before = _step(m)
    changed = _changed(m, before)
    assert {k.split(".")[0] for k in changed} == moving
    frozen = {k for k, p in m.named_parameters() if not p.requires_grad}
    assert not (changed & frozen)
    assert all(k.startswith("vision_tower.") or k.split(".")[0] not in moving for k in frozen)
    groups = m.trainable_parameter_groups()
    assert groups["vision"] == [] and (len(groups["llm"]) > 0) == ("language_model" in moving)


def test_unknown_stage_is_refused(model):
    with pytest.raises(ValueError, match="stage=3"):
        model.set_trainable(3)


# --- visual expert (Table 8) --------------------------------------------------------------------------------


def test_visual_expert_starts_as_the_llm_and_is_used_only_at_visual_positions():
    cfg = tiny(visual_expert=True)
    m = model_of(cfg)
    plain = model_of(vila_tiny())
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("visual_expert.")})
    ids = torch.tensor([[1, 5, 6, IMG, 7, 8]])
    images = pixels(1)
    # A fresh expert is a copy of the LLM: same outputs as the plain model.
    torch.testing.assert_close(m(ids, images=images).logits, plain(ids, images=images).logits)
    # The expert's projections see exactly the visual positions.
    seen = []
    m.visual_expert.layers[0]["q_proj"].register_forward_hook(lambda mod, a, o: seen.append(a[0].shape[0]))
    with torch.no_grad():
        for layer in m.visual_expert.layers:
            for lin in layer.values():
                lin.weight.add_(torch.randn_like(lin.weight))
    text = torch.tensor([[1, 5, 6, 7, 8]])
    torch.testing.assert_close(m(text).logits, plain(text).logits)  # text only: the expert never runs
    assert seen == []
    changed = m(ids, images=images).logits
    reference = plain(ids, images=images).logits
    assert seen == [m.tokens_per_image]
    n = m.tokens_per_image
    torch.testing.assert_close(changed[0, :3], reference[0, :3])  # before the image: untouched (causal)
    assert not torch.allclose(changed[0, 3 : 3 + n], reference[0, 3 : 3 + n])


def test_a_deep_copy_routes_to_its_own_expert():
    import copy

    m = model_of(tiny(visual_expert=True))
    twin = copy.deepcopy(m)
    ids, images = torch.tensor([[1, IMG, 5]]), pixels(1)
    reference = m(ids, images=images).logits
    with torch.no_grad():
        twin.visual_expert.layers[0]["v_proj"].weight.mul_(3.0)
    torch.testing.assert_close(m(ids, images=images).logits, reference)
    assert not torch.allclose(twin(ids, images=images).logits, reference)


def test_visual_expert_training_leaves_the_llm_frozen():
    m = model_of(tiny(visual_expert=True))
    m.set_trainable(1)
    before = _step(m)
    changed = {k.split(".")[0] for k in _changed(m, before)}
    assert changed == {"mm_projector", "visual_expert"}


def test_load_llm_state_dict_recopies_the_expert():
    m = model_of(tiny(visual_expert=True))
    other = model_of(vila_tiny(), seed=5).language_model.state_dict()
    m.load_llm_state_dict(other)
    torch.testing.assert_close(m.visual_expert.layers[1]["down_proj"].weight, other["model.layers.1.mlp.down_proj.weight"])


# --- LoRA (Table 9) -----------------------------------------------------------------------------------------


def test_lora_switch_trains_only_adapters_and_starts_as_the_base_llm():
    m = model_of(tiny(lora_rank=4))
    plain = model_of(vila_tiny(), seed=7)
    assert any(".lora_A." in k for k in m.state_dict())
    m.load_llm_state_dict(plain.language_model.state_dict())
    m.mm_projector.load_state_dict(plain.mm_projector.state_dict())
    m.vision_tower.load_state_dict(plain.vision_tower.state_dict())
    ids = torch.tensor([[1, IMG, 5, 6]])
    torch.testing.assert_close(m(ids, images=pixels(1)).logits, plain(ids, images=pixels(1)).logits)
    m.set_trainable(1)
    llm_trainable = {k for k, p in m.language_model.named_parameters() if p.requires_grad}
    assert llm_trainable and all(".lora_" in k for k in llm_trainable)
    before = _step(m)
    changed = _changed(m, before)
    assert changed and all(k.startswith("mm_projector.") or ".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed)


def test_lora_rank_64_on_the_7b_llm_has_the_expected_adapter_size():
    cfg = get_preset("vila", "vila-7b")
    cfg.ablation.lora_rank = 64
    m = build_vila(cfg, device="meta")
    lora = sum(p.numel() for k, p in m.named_parameters() if ".lora_" in k)
    h, f, r, layers = 4096, 11008, 64, 32
    per_layer = 4 * r * (h + h) + 2 * r * (h + f) + r * (f + h)  # q k v o, gate up, down
    assert lora == layers * per_layer == 159_907_840


def test_visual_expert_and_lora_together_are_refused():
    with pytest.raises(ValueError, match="pick one"):
        build_vila(tiny(visual_expert=True, lora_rank=4), device="meta")


# --- generation ---------------------------------------------------------------------------------------------


def test_batched_left_padded_generation_equals_one_row_at_a_time(model):
    images = pixels(3)
    a = model.generate(torch.tensor([[1, IMG, 5, IMG, 6]]), images=images[:2], max_new_tokens=5)
    b = model.generate(torch.tensor([[1, IMG, 9]]), images=images[2:], max_new_tokens=5)
    batch = model.generate(
        torch.tensor([[1, IMG, 5, IMG, 6], [0, 0, 1, IMG, 9]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
        images=images,
        max_new_tokens=5,
    )
    pad = model.vila_config.llm.pad_token_id
    for row, alone in zip(batch.tolist(), (a[0].tolist(), b[0].tolist())):  # alone stops at </s>; batched rows pad
        assert row == alone + [pad] * (len(row) - len(alone))
    # Greedy = argmax of the forward logits, step by step.
    ids = torch.tensor([[1, IMG, 9]])
    first = model(ids, images=images[2:]).logits[0, -1].argmax()
    assert int(b[0, 0]) == int(first)


# --- configs and presets ------------------------------------------------------------------------------------


def test_paper_presets_on_meta_have_the_published_sizes():
    m7 = build_vila(get_preset("vila", "vila-7b"), device="meta")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m7.language_model) == 6_738_415_616  # Llama-2-7B
    assert count(m7.vision_tower) == 303_507_456  # CLIP ViT-L/14-336 vision tower
    assert count(m7.mm_projector) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert m7.tokens_per_image == 576
    m13 = build_vila(get_preset("vila", "vila-13b"), device="meta")
    assert count(m13.language_model) == 13_015_864_320  # Llama-2-13B


def test_token_counts_of_the_resolution_and_projector_ablations():
    cfg = get_preset("vila", "vila-7b")
    assert cfg.tokens_per_image == 576
    assert resolve(cfg, overrides=["vision.image_size=224"]).tokens_per_image == 256
    assert resolve(cfg, overrides=["projector.type=downsample_2x2"]).tokens_per_image == 144
    assert resolve(cfg, overrides=["vision.select_feature=cls_patch"]).tokens_per_image == 577


def test_bad_configs_are_named_before_anything_is_built():
    cfg = vila_tiny()
    cfg.vision = VisionConfig(image_size=18, patch_size=4, hidden_size=32, num_layers=3, num_heads=2)
    with pytest.raises(ValueError, match="vision.image_size=18"):
        build_vila(cfg)
    cfg = vila_tiny()
    cfg.image_token_index = 5
    with pytest.raises(ValueError, match="image_token_index=5"):
        build_vila(cfg)


def test_summary_cli_reports_the_vila_presets(capsys):
    from model.summary import main

    assert main(["--config", "vila-7b", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 7_062_902_784
    assert summary["groups"]["llm"] == 6_738_415_616
    assert summary["unassigned"] == {}
    assert summary["components"]["vision_tower"]["trainable"] == 0


def test_mini_preset_matches_the_mini_world():
    from harness.miniworld import TEXT_VOCAB_SIZE

    cfg = get_preset("vila", "vila-mini")
    assert cfg.llm.vocab_size == TEXT_VOCAB_SIZE
    assert (cfg.llm.bos_token_id, cfg.llm.eos_token_id) == (1, 2)  # the mini BPE's <s>, </s>
    assert cfg.vision.image_size <= 64 and cfg.tokens_per_image == 36
    build_vila(cfg, device="meta")


# --- conversation templates ---------------------------------------------------------------------------------


def test_conversation_templates():
    from model.vila.conversation import VICUNA_SYSTEM, get_template

    turns = [("<image>\nWhat is it?", "A circle."), ("Colour?", None)]
    # Expected strings: VILA llava/conversation.py `Conversation.get_prompt` (v1.0 and vila1.5), templates
    # conv_vicuna_v1, conv_vicuna_v1_nosys (system "" + sep " "), conv_llama_2, conv_llava_llama_2, conv_llava_plain,
    # hermes_2 and llama_3_chat (vila1.5), with messages [user, answer, user, None].
    assert get_template("vicuna_v1").prompt(turns) == (
        VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A circle.</s>USER: Colour? ASSISTANT:"
    )
    assert get_template("vicuna_v1_nosys").prompt(turns[1:]) == " USER: Colour? ASSISTANT:"
    assert get_template("plain").prompt([("<image>", None)]) == "<image>\n"  # get_prompt: user + sep
    assert get_template("plain").prompt([("<image>", "a red circle")]) == "<image>a red circle\n"  # preprocess_plain
    llava_llama2 = get_template("llava_llama_2").prompt(turns)
    assert llava_llama2 == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
        "<</SYS>>\n\n<image>\nWhat is it? [/INST] A circle. </s><s>[INST] Colour? [/INST]"
    )
    llama2 = get_template("llama_2").prompt(turns)
    assert llama2 == (
        "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
        "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
        "or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
        "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
        "something not correct. If you don't know the answer to a question, please don't share false information."
        "\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A circle. </s><s>[INST] Colour? [/INST]"
    )
    assert get_template("hermes-2").prompt(turns) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA circle.<|im_end|><|im_start|>user\nColour?<|im_end|><|im_start|>assistant\n"
    )
    assert get_template("llama_3").prompt(turns) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user with "
        "a variety of tasks using natural language.<|end_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "<image>\nWhat is it?<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\nA circle.<|end_of_text|>"
        "<|start_header_id|>user<|end_header_id|>\n\nColour?<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    )
    with pytest.raises(ValueError, match="unknown conversation template 'x'"):
        get_template("x")


def test_tokenize_with_images_puts_one_id_per_placeholder():
    from model.lavit.vocabulary import build_byte_text_tokenizer
    from model.vila.conversation import tokenize_with_images

    tok = build_byte_text_tokenizer()
    ids = tokenize_with_images("a<image>bc<image>", tok, IMG)
    assert ids == [1, tok.convert_tokens_to_ids("a"), IMG, tok.convert_tokens_to_ids("b"), tok.convert_tokens_to_ids("c"), IMG]


# --- eval adapter -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter():
    from PIL import Image  # noqa: F401

    from model.lavit.vocabulary import build_byte_text_tokenizer
    from model.vila.eval_adapter import VilaEvalAdapter

    cfg = vila_tiny()
    cfg.llm.vocab_size = 320  # the byte tokenizer's 259 ids
    return VilaEvalAdapter(model_of(cfg), build_byte_text_tokenizer(), model_id="vila:test", batch_size=2)


def _images(n: int):
    from PIL import Image

    return [Image.new("RGB", (20, 20), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_adapter_answers_and_interleaved_requests_agree(adapter):
    imgs = _images(3)
    settings = {"max_new_tokens": 4, "conv_template": "plain"}
    answers = adapter.answer(imgs, ["q1", "q2", "q3"], **settings)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    # The same prompts as interleaved sequences ("plain": no template text but the release's "\n" after the user
    # text, llava/conversation.py get_prompt with SeparatorStyle.PLAIN) give the same continuations.
    inter = adapter.generate_interleaved([[im, "\nq" + str(i + 1) + "\n"] for i, im in enumerate(imgs)], max_new_tokens=4)
    assert inter == answers
    assert len(adapter.generate_interleaved([[imgs[0], "a", imgs[1], "b"], ["text only"]], max_new_tokens=3)) == 2
    assert len(adapter.caption(imgs[:2], "Describe.", max_new_tokens=3)) == 2
    with pytest.raises(ValueError, match=r"unknown \['beam'\]"):
        adapter.caption(imgs[:1], "", max_new_tokens=3, beam=2)
    with pytest.raises(ValueError, match=r"missing \['max_new_tokens'\]"):
        adapter.caption(imgs[:1], "")
    # the tasks' shared greedy defaults carry beam settings: inert at one beam, refused with several
    plain = adapter.caption(imgs[:2], "Describe.", max_new_tokens=3)
    assert adapter.caption(imgs[:2], "Describe.", max_new_tokens=3, length_penalty=1.0, early_stopping=True) == plain
    with pytest.raises(ValueError, match="num_beams=2"):
        adapter.caption(imgs[:1], "", max_new_tokens=3, num_beams=2)


def test_adapter_scores_are_sums_of_token_log_probs(adapter):
    imgs = _images(1)
    scores = adapter.score_text(["The colour is", "Plain"], [" red", " text"], images=[imgs[0], None])
    tok, model = adapter.tokenizer, adapter.model
    ctx = [1, *tok("The colour is", add_special_tokens=False)["input_ids"]]
    cont = tok(" red", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[1, IMG, *tok("\nThe colour is", add_special_tokens=False)["input_ids"], *cont]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, images=model.vision_tower.preprocess(imgs)).logits[0], -1)
    n, length = model.tokens_per_image, ids.shape[1] - 1 + model.tokens_per_image
    expected = sum(float(logp[length - len(cont) - 1 + i, t]) for i, t in enumerate(cont))
    assert scores[0] == pytest.approx(expected, abs=1e-4)
    assert scores[1] < 0 and len(ctx) > 1 and n == 16


@pytest.mark.parametrize("kind", ["caption", "vqa", "interleaved"])
def test_every_task_decoding_setting_for_vila_is_one_the_adapter_reads(kind):
    """eval/tasks.py owns the decoding settings; whatever it hands the `vila` family must be accepted by the adapter
    (an unknown key is an error there, by design)."""
    from eval.tasks import TASKS
    from model.vila.eval_adapter import decoding_settings

    specs = [s for s in TASKS.values() if s.kind == kind]
    assert specs
    for spec in specs:
        decoding_settings(kind, spec.generation_for("vila"))
