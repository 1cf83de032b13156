"""LaVIT Table 2 at mini scale: the pixel-space pixel decoder, a unified run evaluated with a stage-1b run beside it,
the mini text-to-image task and its metric, reading shapes and colours off generated pixels, and the table's
declarations (nothing of Table 1's chain is retrained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from harness.config import get_preset, resolve
from harness.miniworld import PALETTE, image_attributes
import train.lavit.config  # noqa: F401,E402  (registers the stage presets)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the pixel decoder in pixel space --------------------------------------------------------------------------


def _pixel_space_config():
    import dataclasses

    from model.lavit.configuration import lavit_tiny

    cfg = lavit_tiny()
    return dataclasses.replace(cfg, pixel_decoder=dataclasses.replace(cfg.pixel_decoder, latent_space="pixels", image_size=16))


def test_pixel_space_decoder_has_no_autoencoder_and_renders_at_its_size():
    from model.lavit.pixel_decoder import PixelDecoder

    cfg = _pixel_space_config()
    cfg.validate()
    assert cfg.vae_scale_factor == 1
    torch.manual_seed(0)
    decoder = PixelDecoder(cfg.pixel_decoder, context_dim=cfg.tokenizer.unet_context_dim)
    assert decoder.vae is None and decoder.unet.config.in_channels == 3
    assert not any(k.startswith("vae.") for k in decoder.state_dict())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(decoder.encode_latents(images), images)  # the latents are the pixels
    assert torch.allclose(decoder.decode_latents(images), (images / 2 + 0.5).clamp(0, 1))
    context = torch.randn(2, 3, cfg.tokenizer.unet_context_dim)
    assert torch.isfinite(decoder.loss(images, context, generator=torch.Generator().manual_seed(0)))
    out = decoder.sample(context, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_the_added_config_key_leaves_existing_run_hashes_alone():
    from harness.config import to_dict
    from reproduce.table import _stable_config

    cfg = get_preset("train/pixel_decoder", "mini")
    default = _stable_config(cfg, {})
    assert "latent_space" not in default  # at the old behaviour the key is not hashed: cached runs keep their names
    tree = to_dict(cfg)
    del tree["model"]["pixel_decoder"]["latent_space"]
    assert json.loads(default) == tree
    assert "latent_space" in _stable_config(resolve(cfg, overrides=["model.pixel_decoder.latent_space=pixels"]), {})


# --- a unified run with a pixel decoder run beside it -----------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two stage-1a tokenizers (.safetensors), a 2-step unified run on the first and 2-step pixel-space pixel decoder
    runs on each."""
    import train.lavit.config  # noqa: F401  (registers the stage presets)
    from model.lavit.tokenizer import build_tokenizer
    from train.stages import run_stage

    root = tmp_path_factory.mktemp("t2i")
    unified = get_preset("train/unified", "mini")
    files = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        tok = build_tokenizer(unified.model.tokenizer)
        files.append(root / f"tokenizer{seed}.safetensors")
        save_file({f"tokenizer.{k}": v.contiguous() for k, v in tok.state_dict().items()}, str(files[-1]))
    short = ["loop.steps=2", "loop.checkpoint_every=2"]
    assert run_stage("unified", resolve(unified, overrides=[f"tokenizer_checkpoint={files[0]}", *short]), root / "unified")["finished"]
    decoders = []
    for i, file in enumerate(files):
        cfg = resolve(get_preset("train/pixel_decoder", "mini"), overrides=[
            f"tokenizer_checkpoint={file}", "model.pixel_decoder.latent_space=pixels", "model.pixel_decoder.image_size=16", *short])
        decoders.append(root / f"pixel_decoder{i}")
        assert run_stage("pixel_decoder", cfg, decoders[-1])["finished"]
    return root / "unified", decoders


T2I = {"top_k": 5, "temperature": 1.0, "cfg_scale": 1.5, "min_new_tokens": 1, "max_new_tokens": 3,
       "num_inference_steps": 2, "decoder_guidance_scale": 2.0}  # fmt: skip


def test_a_unified_run_renders_images_with_a_pixel_decoder_run_of_its_tokenizer(runs):
    from model.lavit.checkpoints import load_for_eval

    unified, (decoder, _) = runs
    plain = load_for_eval(unified)
    assert plain.adapter.model.pixel_decoder is None
    loaded = load_for_eval(unified, pixel_decoder=decoder)
    assert loaded.model_id.startswith(plain.model_id + "+pixel_decoder:") and loaded.model_id.endswith("@step=2")
    assert loaded.config.pixel_decoder.enabled and loaded.config.pixel_decoder.latent_space == "pixels"
    # The U-Net is the run's, strictly loaded (not a fresh initialisation).
    from safetensors.torch import load_file

    saved = load_file(str(decoder / "checkpoints" / "step_00000002" / "model.safetensors"))
    unet = loaded.adapter.model.pixel_decoder.unet.state_dict()
    assert all(torch.equal(unet[k[len("pixel_decoder.unet."):]], v) for k, v in saved.items() if k.startswith("pixel_decoder.unet."))
    # So is the tokenizer's unet_proj, which stage 1b trains (x_rec -> the U-Net's context): the run's, not stage 1a's.
    unet_proj = loaded.adapter.model.visual_tokenizer.decoder.unet_proj.state_dict()
    assert all(torch.equal(unet_proj[k[len("tokenizer.decoder.unet_proj."):]], v)
               for k, v in saved.items() if k.startswith("tokenizer.decoder.unet_proj."))
    assert not torch.equal(unet_proj["weight"], plain.adapter.model.visual_tokenizer.decoder.unet_proj.weight)
    images = loaded.adapter.generate_images(["a red circle.", "a blue square."], [0, 1], **T2I)
    again = loaded.adapter.generate_images(["a red circle."], [0], **T2I)
    assert [im.size for im in images] == [(16, 16)] * 2 and images[0].tobytes() == again[0].tobytes()


def test_a_pixel_decoder_of_another_tokenizer_or_stage_is_refused(runs):
    from model.lavit.checkpoints import load_for_eval
    from model.weights import CheckpointLayoutError

    unified, (_, other) = runs
    with pytest.raises(CheckpointLayoutError, match="only renders the codes of its own stage-1a tokenizer"):
        load_for_eval(unified, pixel_decoder=other)
    with pytest.raises(CheckpointLayoutError, match="needs a `pixel_decoder` run"):
        load_for_eval(unified, pixel_decoder=unified)
    with pytest.raises(FileNotFoundError):
        load_for_eval(unified, pixel_decoder=unified.parent / "nowhere")


# --- reading generated pictures ----------------------------------------------------------------------------------


def _picture(shape: str, color: str, size: int = 32, background=(238, 250, 245)) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw, box = ImageDraw.Draw(image), (8, 8, 24, 24)
    if shape == "circle":
        draw.ellipse(box, fill=PALETTE[color])
    elif shape == "rectangle":
        draw.rectangle(box, fill=PALETTE[color])
    else:
        draw.polygon([(8, 24), (24, 24), (16, 8)], fill=PALETTE[color])
    return image


@pytest.mark.parametrize("shape", ["circle", "rectangle", "triangle"])
@pytest.mark.parametrize("color", ["red", "teal", "gray", "yellow"])
def test_image_attributes_reads_shape_and_colour_of_drawn_pictures(shape, color):
    assert image_attributes(_picture(shape, color)) == (shape, color)


def test_image_attributes_sees_nothing_in_a_blank_or_noisy_background():
    assert image_attributes(Image.new("RGB", (32, 32), (240, 240, 250))) == (None, None)
    # Off-palette colours still map to the nearest palette colour (generated images are not exact).
    assert image_attributes(_picture("circle", "red").point(lambda v: max(0, v - 20)))[1] == "red"


# --- the mini text-to-image task ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.miniworld import build_miniworld

    return build_miniworld(tmp_path_factory.mktemp("mw") / "world", seed=0, train_images=60, test_images=12)


def test_mini_t2i_prompts_are_test_captions_and_its_metric_scores_fid_and_kid(world, tmp_path, monkeypatch):
    from eval import fid
    from eval.tasks import get_task

    spec = get_task("mini_t2i")
    samples, root = spec.read(world.root, 6)
    assert len(samples) == 6 and root == world.root
    for s in samples:
        shape, color = world.labels["test"][str(s.id)]
        assert s.text == f"a {color} {shape}." and (root / s.image).is_file() and s.references == (s.image,)
    assert spec.generation_for("lavit")["max_new_tokens"] == 16  # the tiny tokenizer's 16 patches
    # The metric against stand-in features (the real extractor is tested in test_fid.py): each image's feature is
    # its mean colour, repeated; identical sets score 0, the real images resized to the generated size.
    def features(extractor, files, *args, **kwargs):
        import numpy as np

        return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)).mean((0, 1)).repeat(4) for f in files])

    monkeypatch.setattr(fid, "extract_features", features)
    monkeypatch.setattr(fid, "create_extractor", lambda choice, device="cpu": None)
    out = tmp_path / "task"
    for s in samples:  # "generated" = the real image at 32 px
        (out / "images").mkdir(parents=True, exist_ok=True)
        Image.open(root / s.image).convert("RGB").resize((32, 32), Image.BICUBIC).save(out / "images" / f"{s.id}.png")
    metric = spec.metric_builder(world.root, out)
    references = {s.id: list(s.references) for s in samples}
    same = metric(references, {s.id: str(out / "images" / f"{s.id}.png") for s in samples}, spec.variant)
    assert same["FID"] == pytest.approx(0, abs=1e-6) and set(same) == {"FID", "KID", "KID_std"}
    assert {Image.open(p).size for p in (out / "real32").glob("*.png")} == {(32, 32)}
    assert len(list((tmp_path / "fid_features").glob("*.pt"))) == 1  # real and generated bytes are the same: one cache entry
    shifted = {s.id: str(out / "images" / f"{s.id}.png") for s in samples[:1]}
    shifted.update({s.id: str(out / "images" / f"{samples[0].id}.png") for s in samples[1:]})  # all the first image
    assert metric(references, shifted, spec.variant)["FID"] > 1.0


def test_generated_hit_rate_reads_runner_predictions(world, tmp_path):
    from eval.baselines import generated_hit_rate
    from harness.miniworld import image_hit_rates, train_images

    ids = sorted(world.labels["test"], key=int)[:4]
    lines = [json.dumps({"header": {"format": 1}})]
    (tmp_path / "images").mkdir()
    for k, i in enumerate(ids):
        shape, color = world.labels["test"][i]
        drawn = _picture(shape if k < 3 else {"circle": "triangle"}.get(shape, "circle"), color)
        drawn.save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps({"id": int(i), "prediction": f"images/{i}.png"}))
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    assert generated_hit_rate(world, tmp_path / "predictions.jsonl", "shape") == 0.75
    assert generated_hit_rate(world, tmp_path / "predictions.jsonl", "color") == 1.0
    train = train_images(world, 5)
    assert len(train) == 5 and all(str(i) in world.labels["train"] for i in train)
    import io

    rates = image_hit_rates(world, {i: Image.open(io.BytesIO(b)) for i, b in train.items()}, "train")
    assert rates["color"] >= 0.8  # the reader on real images


# --- the table's declarations --------------------------------------------------------------------------------


def test_table2_reuses_table1_runs_and_adds_only_the_pixel_decoder(tmp_path):
    import reproduce.table as T
    from reproduce.table1 import TABLE as TABLE1
    from reproduce.table2 import OURS, TABLE

    def plan(spec, label):
        profile = spec.profiles["mini"]
        ctx = T.Context(spec, "mini", profile, tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
        return T.plan_chain(profile.rows[label], ctx)

    table1 = [s.directory for s in plan(TABLE1, "Ours (mini LaVIT)")]
    chain = plan(TABLE, OURS)
    assert [s.directory for s in chain if s.run.stage != "pixel_decoder"] == table1
    assert chain[-1].run.stage == "unified"  # the evaluated run
    decoder = next(s for s in chain if s.run.stage == "pixel_decoder")
    assert decoder.config.tokenizer_checkpoint == str(table1[1]) and decoder.config.model.pixel_decoder.latent_space == "pixels"
    assert decoder.config.model.tokenizer == chain[-1].config.model.tokenizer
    assert TABLE.profiles["mini"].rows[OURS].load_with == (("pixel_decoder", "pixel_decoder"),)
    paper = TABLE.profiles["paper"]
    assert paper.mode == "numeric" and [c.task for c in paper.columns] == ["coco30k_fid"]


def test_load_with_must_name_a_stage_of_the_chain(tmp_path):
    import reproduce.table as T
    from reproduce.mini_chain import MINI_CHAIN

    profile = T.Profile(rows={"A": T.Trained("lavit", MINI_CHAIN, load_with=(("pixel_decoder", "pixel_decoder"),))}, columns=(), reference="x")
    spec = T.TableSpec(key="x", script="x", profiles={"mini": profile})
    ctx = T.Context(spec, "mini", profile, tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
    with pytest.raises(T.InputError, match="load_with pixel_decoder='pixel_decoder' names no stage"):
        T.train_rows(ctx)


def test_paper_profile_bad_input_is_one_line(tmp_path, capsys):
    from reproduce.table import main
    from reproduce.table2 import TABLE

    argv = ["--profile", "paper", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(TABLE, argv) == 2
    assert "pass --data-root DIR" in capsys.readouterr().err
    assert main(TABLE, [*argv, "--data-root", str(tmp_path)]) == 2  # the COCO files are checked before any model
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "coco30k_fid" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
