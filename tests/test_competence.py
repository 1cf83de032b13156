"""The selector measures of `reproduce/competence.py`: which patches hold the shape, the forced keep masks built from
them, and stage 1a's reconstruction under those masks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from model.lavit.tokenizer import build_tokenizer
from model.lavit.tokenizer_config import tiny
from reproduce.competence import FORCED_MASKS, forced_keep_masks, foreground_patches, reconstruction_by_kept_patches


def square_image(row: int, col: int, size: int = 56, grid: int = 4) -> Image.Image:
    """A grey picture with a red square filling exactly the patch (row, col) of a grid x grid split."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    step = size // grid
    ImageDraw.Draw(image).rectangle([col * step, row * step, (col + 1) * step - 1, (row + 1) * step - 1], fill=(255, 0, 0))
    return image


def test_foreground_patches_finds_the_one_patch_the_shape_fills():
    shares = foreground_patches([square_image(1, 2), square_image(3, 0)], grid=4)
    assert shares.shape == (2, 16)
    assert shares[0, 1 * 4 + 2] == 1.0 and shares[1, 3 * 4 + 0] == 1.0
    assert shares.sum(dim=1).tolist() == [1.0, 1.0]  # nothing else is foreground


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 15))
def test_forced_masks_keep_k_patches_and_the_foreground_mask_keeps_the_most_foreground(seed, k):
    generator = torch.Generator().manual_seed(seed)
    foreground = torch.rand(3, 16, generator=generator)
    masks = forced_keep_masks(foreground, k, generator)
    assert set(masks) == set(FORCED_MASKS)
    for mask in masks.values():
        assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [k, k, k]
    kept = foreground.masked_fill(~masks["foreground"], float("inf")).min(dim=1).values
    dropped = foreground.masked_fill(masks["foreground"], float("-inf")).max(dim=1).values
    assert (kept >= dropped).all()  # every kept patch is at least as foreground as every dropped one
    kept = foreground.masked_fill(~masks["background"], float("-inf")).max(dim=1).values
    dropped = foreground.masked_fill(masks["background"], float("inf")).min(dim=1).values
    assert (kept <= dropped).all()


def test_reconstruction_by_kept_patches_reports_every_mask_and_repeats_itself():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tiny()).eval()
    images = [square_image(r, c) for r in range(4) for c in range(0, 4, 2)]
    first = reconstruction_by_kept_patches(tokenizer, images, batch_size=3)  # batches of 3 must not change the result
    k = round(tokenizer.cfg.keep_ratio * 16)
    assert list(first) == ["selector (sampled)", "every patch", *(f"{k} {name} patches" for name in FORCED_MASKS)]
    assert all(0.0 <= v <= 2.0 for v in first.values())  # 1 - cos
    assert len({round(v, 6) for v in first.values()}) > 1  # the masks are not all the same
    again = reconstruction_by_kept_patches(tokenizer, images, batch_size=8)
    assert all(abs(again[n] - first[n]) < 1e-6 for n in first)


def _model_with_pixel_decoder():
    """A tiny stage-1a tokenizer and a 16-px pixel-space decoder, as `load_for_eval(..., pixel_decoder=)` pairs them."""
    import dataclasses
    from types import SimpleNamespace

    from harness.config import get_preset
    from model.lavit.pixel_decoder import PixelDecoder

    import train.lavit.config  # noqa: F401  (registers the LaVIT presets)

    cfg = get_preset("train/pixel_decoder", "mini").model
    torch.manual_seed(0)
    # Fixed length (every patch kept): an image's codes do not depend on the keep mask's Gumbel draw.
    tokenizer = build_tokenizer(dataclasses.replace(cfg.tokenizer, fixed_length=True)).eval()
    # A codebook from k-means of these pictures' features, so that different pictures get different codes.
    tokenizer.init_codebook_kmeans(tokenizer.preprocess([square_image(r, c) for r in range(4) for c in range(4)]))
    decoder_cfg = dataclasses.replace(cfg.pixel_decoder, latent_space="pixels", image_size=16)
    decoder = PixelDecoder(decoder_cfg, context_dim=cfg.tokenizer.unet_context_dim).eval()
    with torch.no_grad():  # diffusers zero-initialises the attention blocks' output layers: give the context a path
        for parameter in decoder.unet.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
        tokenizer.decoder.unet_proj.weight.normal_(0.0, 10.0)  # a context of unit scale, as stage 1b learns it
    return SimpleNamespace(visual_tokenizer=tokenizer, pixel_decoder=decoder)


def test_decoder_conditioning_tells_an_images_own_context_from_anothers():
    from reproduce.competence import decoder_conditioning

    model = _model_with_pixel_decoder()
    images = [square_image(r, c) for r, c in ((0, 0), (3, 3), (1, 2), (2, 0))]
    loss = decoder_conditioning(model, images, timesteps=(50, 500))
    assert list(loss) == ["own context", "another image's context", "unconditional"]
    assert all(v > 0 for v in loss.values())
    assert loss["own context"] != loss["another image's context"]  # different images, different contexts
    assert decoder_conditioning(model, images, timesteps=(50, 500)) == loss  # seeded
    # One image four times: another image's context is the image's own, so the two losses are the same number.
    same = decoder_conditioning(model, [square_image(1, 1)] * 4, timesteps=(50, 500))
    assert same["own context"] == same["another image's context"]


def vqa_samples(n: int) -> tuple[list, dict]:
    """n yes/no and n colour/shape questions of the mini world's forms, on images with known labels."""
    from eval.interface import EvalSample
    from harness.miniworld import COLORS, SHAPES, yes_no_answer

    samples, labels = [], {}
    for i in range(n):
        shape, color = SHAPES[i % 3], COLORS[i % 8]
        labels[str(i)] = (shape, color)
        asked = COLORS[(i * 5) % 8]
        yes_no = f"Is there a {asked} shape?"
        samples.append(EvalSample(id=2 * i, image=f"images/test/{i}.png", text=yes_no, references=(yes_no_answer(yes_no.lower(), shape, color),) * 10))
        samples.append(EvalSample(id=2 * i + 1, image=f"images/test/{i}.png", text="What color is the shape?", references=(color,) * 10))
    return samples, labels


def test_vqa_by_context_scores_each_context_and_puts_the_question_as_the_evaluation_does():
    """A scorer that answers right exactly when the scene is written in its context (as the mini LLM does) and says
    the first candidate otherwise: 100 % with the scene in words, the first candidate's share without."""
    from harness.miniworld import COLORS, yes_no_answer
    from reproduce.competence import VQA_CONTEXTS, vqa_by_context

    samples, labels = vqa_samples(24)
    captions = {i: f"a {c} {s}" for i, (s, c) in labels.items()}
    seen = []

    def score(context, continuations, image):
        seen.append((context, image))
        question = context.split("Question: ")[1].removesuffix(" Answer:")
        for shape, color in labels.values():
            if f"a {color} {shape}" in context:  # the scene is written: answer from it
                gold = yes_no_answer(question, shape, color) or color
                return [0.0 if c == " " + gold else -1.0 for c in continuations]
        return [0.0] + [-1.0] * (len(continuations) - 1)

    result = vqa_by_context(score, samples, labels, captions, n=24)
    assert list(result) == [f"{kind}, {name}" for kind in ("yes/no", "colour/shape") for name in VQA_CONTEXTS]
    for kind in ("yes/no", "colour/shape"):
        for name in ("scene in words", "image + scene in words", "image + own caption"):
            assert result[f"{kind}, {name}"] == 100.0
    first_yes = 100 * sum(s.references[0] == "yes" for s in samples if s.references[0] in ("yes", "no")) / 24
    first_colour = 100 * sum(s.references[0] == COLORS[0] for s in samples if s.references[0] not in ("yes", "no")) / 24
    assert result["yes/no, image"] == result["yes/no, nothing"] == first_yes < 100
    assert result["colour/shape, image"] == result["colour/shape, nothing"] == first_colour < 100
    # The evaluation's question: released normalisation (lower case, "?" kept) inside "Question: {} Answer:"; the
    # image is passed only where the context has it.
    assert ("Question: is there a red shape? Answer:", None) in seen
    assert any(image == "images/test/0.png" and context.startswith("Question: ") for context, image in seen)
    scene_images = {image is None for context, image in seen if context.startswith("The picture shows")}
    assert scene_images == {True, False}  # the scene in words alone, and with the image


def test_accuracy_by_form_finds_the_form_a_model_reads_without_its_negation():
    """A model that answers "is no X present?" as "is X present?" and every other form right: that form's groups
    score 0 with "said yes" the opposite of the answer; the others score 100; the task's metric does the scoring."""
    from eval.interface import EvalSample
    from harness.miniworld import COLORS, SHAPES, yes_no_answer
    from reproduce.vqa_forms import accuracy_by_form, question_form

    assert question_form(" Is no Red shape present?") == "is no {colour} shape present?"
    assert question_form("does the image not contain a triangle?") == "does the image not contain a {shape}?"
    samples, predictions = [], {}
    for i in range(48):
        shape, color, asked = SHAPES[i % 3], COLORS[i % 8], SHAPES[(i // 3) % 3]
        for k, form in enumerate(("is no {} present?", "is there a {}?")):
            text = form.format(asked)
            gold = yes_no_answer(text, shape, color)
            samples.append(EvalSample(id=2 * i + k, image=f"images/test/{i}.png", text=text, references=(gold,) * 10))
            read_as = yes_no_answer(text.replace("is no ", "is a "), shape, color)  # the negation dropped
            predictions[2 * i + k] = f" {read_as.capitalize()}." if k == 0 else gold
    samples.append(EvalSample(id=999, image="images/test/0.png", text="What color is the shape?", references=("red",) * 10))
    frame = accuracy_by_form(samples, predictions, yes_no_only=True)
    assert frame["questions"].sum() == 96 and 999 not in predictions
    by_group = {(r.form, r.answer): (r.accuracy, r["said yes"]) for _, r in frame.iterrows()}
    assert by_group[("is no {shape} present?", "yes")] == (0.0, 0.0)
    assert by_group[("is no {shape} present?", "no")] == (0.0, 100.0)
    assert by_group[("is there a {shape}?", "yes")] == (100.0, 100.0)
    assert by_group[("is there a {shape}?", "no")] == (100.0, 0.0)


def test_vqa_forms_cli_names_a_missing_predictions_file(tmp_path, capsys):
    from reproduce.vqa_forms import main

    assert main([str(tmp_path / "nothing.jsonl"), "--world", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: prediction cache not found: {tmp_path / 'nothing.jsonl'}")
