"""Fidelity of the VILA loaders to the released checkpoints' config files (NVlabs/VILA v1.0 and vila1.5):
LLM config keys, conversation templates, image preprocessing, the tower of a weight file without it, and the
VILA 1.5 SigLIP / per-component releases. Expected values come from the release's code (cited per test) or from
transformers' own classes, never from our implementation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model.vila.checkpoints import load_released, write_released_layout
from model.vila.configuration import ProjectorConfig, vila_tiny
from model.vila.modeling_vila import VilaForCausalLM
from model.weights import CheckpointLayoutError

pytestmark = pytest.mark.usefixtures("one_thread")


def byte_tokenizer():
    from model.lavit.vocabulary import build_byte_text_tokenizer

    return build_byte_text_tokenizer()


def tiny(**llm) -> VilaForCausalLM:
    cfg = vila_tiny()
    cfg.llm.vocab_size = 320
    cfg.projector = ProjectorConfig(type="mlp2x_gelu", transformer_heads=2)
    for k, v in llm.items():
        setattr(cfg.llm, k, v)
    torch.manual_seed(0)
    return VilaForCausalLM(cfg).eval()


# ---------------------------------------------------------------------------------------------
# Item 7: rope_scaling, hidden_act, attention_bias of the LLM config


def test_llm_config_keys_reach_the_llama_model(tmp_path):
    """The released LlavaLlamaForCausalLM is a transformers LlamaForCausalLM over config.json (llava_llama.py:
    `LlamaForCausalLM.__init__(config)`), so every LlamaConfig key acts. Expected: transformers' own
    LlamaForCausalLM built from the written config.json, with the file's `model.*` / `lm_head.*` weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    original = tiny(rope_scaling={"type": "linear", "factor": 2.0}, hidden_act="gelu", attention_bias=True)
    path = write_released_layout(original, byte_tokenizer(), tmp_path / "vila", layout="single")
    written = json.loads((path / "config.json").read_text())
    assert written["rope_scaling"] == {"type": "linear", "factor": 2.0} and written["rope_theta"] == 10000.0
    model, _, config = load_released(path)
    assert config.llm.rope_scaling == {"type": "linear", "factor": 2.0}
    assert config.llm.hidden_act == "gelu" and config.llm.attention_bias is True

    keys = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
            "hidden_act", "attention_bias", "tie_word_embeddings"}  # fmt: skip
    reference = LlamaForCausalLM(LlamaConfig(**{k: written[k] for k in keys})).eval()
    state = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("model.mm_projector.")
             and not k.startswith("model.vision_tower.")}  # fmt: skip
    reference.load_state_dict(state, strict=True)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])
    with torch.no_grad():
        torch.testing.assert_close(model.language_model(input_ids=ids).logits, reference(input_ids=ids).logits)
        # and the keys matter: the same weights without the scaling give other logits
        plain = LlamaForCausalLM(LlamaConfig(**{**{k: written[k] for k in keys}, "rope_scaling": None})).eval()
        plain.load_state_dict(state, strict=True)
        assert not torch.allclose(plain(input_ids=ids).logits, reference(input_ids=ids).logits)


@pytest.mark.parametrize("key, value, message", [
    ("rope_scaling", {"type": "bogus", "factor": 2.0}, r"rope_scaling=\{'type': 'bogus'"),
    ("rope_scaling", {"type": "linear"}, r"rope_scaling=\{'type': 'linear'\} is not a valid RoPE scaling"),
    ("rope_scaling", "linear", r"rope_scaling='linear'"),
    ("hidden_act", "swishy", r"hidden_act='swishy'"),
    ("attention_bias", "yes", r"attention_bias='yes'"),
])  # fmt: skip
def test_llm_config_keys_we_cannot_honour_are_refused_by_name(tmp_path, key, value, message):
    path = write_released_layout(tiny(), byte_tokenizer(), tmp_path / "vila", layout="single")
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match=message):
        load_released(path)


# ---------------------------------------------------------------------------------------------
# Item 5: image preprocessing (image_aspect_ratio, the tower's processor)


def _vision(**kw):
    from model.vila.configuration import VisionConfig

    base = dict(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return VisionConfig(**{**base, **kw})


def _random_image(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def test_pad_is_expand2square_with_the_mean_colour_then_the_clip_processor():
    """VILA 1.0 (image_aspect_ratio "pad"), llava/mm_utils.py process_images: expand2square(image,
    tuple(int(x*255) for x in image_processor.image_mean)) -- the image pasted at ((side-w)//2, (side-h)//2) on
    a square of that colour -- then image_processor.preprocess (CLIPImageProcessor)."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from model.vila.configuration import CLIP_MEAN, CLIP_STD
    from model.vila.vision_tower import preprocess_images

    image = _random_image(20, 11)
    square = Image.new("RGB", (20, 20), (122, 116, 104))  # int(255 * CLIP mean), as the release's gradio default
    square.paste(image, (0, 4))  # (20 - 11) // 2
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))  # fmt: skip
    expected = processor(square, return_tensors="pt")["pixel_values"]
    ours = preprocess_images([image], _vision(image_aspect_ratio="pad"))
    torch.testing.assert_close(ours, expected)


def test_no_setting_is_the_clip_processors_shortest_side_resize_and_centre_crop():
    """A config without image_aspect_ratio: process_images calls image_processor(images) (CLIPImageProcessor:
    shortest side to 16, centre crop 16). A 32 x 16 image with three vertical bands keeps only its middle band."""
    import numpy as np
    from PIL import Image

    from model.vila.configuration import CLIP_MEAN, CLIP_STD
    from model.vila.vision_tower import preprocess_images

    pixels = np.zeros((16, 32, 3), dtype="uint8")
    pixels[:, :8] = (255, 0, 0)
    pixels[:, 8:24] = (10, 200, 30)
    pixels[:, 24:] = (0, 0, 255)
    ours = preprocess_images([Image.fromarray(pixels)], _vision(image_aspect_ratio=""))
    expected = (torch.tensor([10, 200, 30]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(ours[0], expected.view(3, 1, 1).expand(3, 16, 16).float(), atol=1e-5, rtol=0)
    # "resize" stretches the whole image instead: the red and blue bands survive
    stretched = preprocess_images([Image.fromarray(pixels)], _vision(image_aspect_ratio="resize"))
    assert stretched[0, 0, :, 0].mean() > 1.0 and stretched[0, 2, :, -1].mean() > 1.0


def test_released_configs_set_the_preprocessing(tmp_path):
    path = write_released_layout(tiny(), byte_tokenizer(), tmp_path / "vila", layout="components")
    top = json.loads((path / "config.json").read_text())
    assert top["image_aspect_ratio"] == "resize"  # our runs stretch, and say so
    top["image_aspect_ratio"] = "pad"
    (path / "config.json").write_text(json.dumps(top))
    pre = json.loads((path / "vision_tower" / "preprocessor_config.json").read_text())
    (path / "vision_tower" / "preprocessor_config.json").write_text(
        json.dumps({**pre, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    _, _, config = load_released(path)
    assert config.vision.image_aspect_ratio == "pad"
    assert config.vision.image_mean == (0.5, 0.5, 0.5) and config.vision.image_std == (0.25, 0.25, 0.25)
    del top["image_aspect_ratio"]  # no key: getattr(model_cfg, "image_aspect_ratio", None) -> the processor alone
    (path / "config.json").write_text(json.dumps(top))
    assert load_released(path)[2].vision.image_aspect_ratio == ""
    top["image_aspect_ratio"] = "anyres"
    (path / "config.json").write_text(json.dumps(top))
    with pytest.raises(CheckpointLayoutError, match=r"image_aspect_ratio='anyres'"):
        load_released(path)
    top["image_aspect_ratio"] = "pad"
    (path / "config.json").write_text(json.dumps(top))
    (path / "vision_tower" / "preprocessor_config.json").write_text(json.dumps({**pre, "crop_size": {"height": 8, "width": 8}}))
    with pytest.raises(CheckpointLayoutError, match=r"crop_size=\{'height': 8, 'width': 8\}"):
        load_released(path)


# ---------------------------------------------------------------------------------------------
# Item 9: a VILA 1.0 weight file without the tower takes it from mm_vision_tower


def test_weights_without_the_tower_take_it_from_the_local_mm_vision_tower(tmp_path):
    from safetensors.torch import save_file

    original = tiny()
    path = write_released_layout(original, byte_tokenizer(), tmp_path / "vila", layout="single")
    state = load_file(str(path / "model.safetensors"))
    tower_prefix = "model.vision_tower.vision_tower.vision_model."
    save_file({k: v for k, v in state.items() if not k.startswith(tower_prefix)}, str(path / "model.safetensors"))
    # The tower folder as openai/clip-vit-large-patch14-336 ships it: a whole CLIPModel (vision + text towers)
    tower = tmp_path / "clip-tower"
    tower.mkdir()
    config = json.loads((path / "config.json").read_text())
    vision_cfg = config.pop("vision_tower_cfg")
    (tower / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision_cfg, "text_config": {}}))
    tower_state = {"vision_model." + k[len(tower_prefix):]: v for k, v in state.items() if k.startswith(tower_prefix)}
    tower_state.update({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.ones(())})
    save_file(tower_state, str(tower / "model.safetensors"))
    config["mm_vision_tower"] = str(tower)
    (path / "config.json").write_text(json.dumps(config))
    model, _, _ = load_released(path)
    for k, v in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"  # not local: nothing to read the tower from
    config["vision_tower_cfg"] = vision_cfg
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match=r"no vision tower .*mm_vision_tower='openai/clip-vit-large-patch14-336'"):
        load_released(path)


# ---------------------------------------------------------------------------------------------
# Item 8: a VILA 1.5 release (per-component, SigLIP tower, cls_patch, mlp_downsample)


def _released_flat_square(x: torch.Tensor) -> torch.Tensor:
    """VILA 1.5 llava/model/multimodal_projector/base_projector.py DownSampleBlock.forward / flat_square, as
    released (written out here, not imported from our code)."""
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, -1)
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
    return x.reshape(x.shape[0], -1, x.shape[-1])


@pytest.fixture(scope="module")
def vila15(tmp_path_factory):
    """A tiny VILA 1.5 directory written with transformers' own classes: llm/ (LlamaForCausalLM + tokenizer),
    vision_tower/ (SiglipVisionModel, `vision_model.*` keys, preprocessor_config.json), mm_projector/ (config
    `mm_projector_type: mlp_downsample`, `layers.{1,2,4}.*`), config.json on top as VILA 1.5 writes it."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("vila15") / "VILA1.5-tiny"
    torch.manual_seed(0)
    llm_cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    llm = LlamaForCausalLM(llm_cfg).eval()
    llm.save_pretrained(str(root / "llm"))
    byte_tokenizer().save_pretrained(str(root / "llm"))
    tower_cfg = SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                                   image_size=20, patch_size=4)  # 5 x 5 patches: the downsample pads  # fmt: skip
    tower = SiglipVisionModel(tower_cfg).eval()
    (root / "vision_tower").mkdir(parents=True)
    (root / "vision_tower" / "config.json").write_text(json.dumps(tower_cfg.to_dict()))
    (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "SiglipImageProcessor", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
         "size": {"height": 20, "width": 20}, "resample": 3}))  # fmt: skip
    save_file({"vision_model." + k: v.contiguous() for k, v in tower.state_dict().items()},
              str(root / "vision_tower" / "model.safetensors"))  # fmt: skip
    projector = {"layers.1.weight": torch.rand(96) + 0.5, "layers.1.bias": torch.randn(96) * 0.1,
                 "layers.2.weight": torch.randn(32, 96) * 0.1, "layers.2.bias": torch.randn(32) * 0.1,
                 "layers.4.weight": torch.randn(32, 32) * 0.1, "layers.4.bias": torch.randn(32) * 0.1}  # fmt: skip
    (root / "mm_projector").mkdir()
    (root / "mm_projector" / "config.json").write_text(json.dumps({"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"}))
    save_file(projector, str(root / "mm_projector" / "model.safetensors"))
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "image_aspect_ratio": "resize",
           "mm_vision_select_feature": "cls_patch", "mm_vision_select_layer": -2, "mm_hidden_size": 24,
           "hidden_size": 32, "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "s2": False,
           "vision_resolution": -1, "model_dtype": "torch.bfloat16"}  # fmt: skip
    (root / "config.json").write_text(json.dumps(top))
    return root, llm, tower, projector


def test_vila15_siglip_release_loads_and_encodes_images_as_released(vila15):
    root, llm, tower, projector = vila15
    model, _, config = load_released(root)
    assert config.vision.tower == "siglip" and config.vision.select_feature == "cls_patch"
    assert config.projector.type == "downsample_2x2" and model.tokens_per_image == 9  # 5 x 5 -> 6 x 6 -> 3 x 3
    assert config.vision.image_aspect_ratio == "resize" and config.vision.image_mean == (0.5, 0.5, 0.5)
    pixels = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # The release: hidden_states[-2] with every token (cls_patch), DownSampleBlock, LayerNorm, Linear, GELU,
        # Linear (MultimodalProjector "mlp_downsample"), over transformers' SiglipVisionModel
        features = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        x = _released_flat_square(features)
        x = torch.nn.functional.layer_norm(x, (96,), projector["layers.1.weight"], projector["layers.1.bias"])
        x = torch.nn.functional.linear(x, projector["layers.2.weight"], projector["layers.2.bias"])
        x = torch.nn.functional.linear(torch.nn.functional.gelu(x), projector["layers.4.weight"], projector["layers.4.bias"])
        torch.testing.assert_close(model.encode_images(pixels), x)
        ids = torch.tensor([[1, 40, 41, 42]])
        torch.testing.assert_close(model.language_model(input_ids=ids).logits, llm(input_ids=ids).logits)


def test_vila15_options_we_do_not_implement_are_refused(vila15, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(vila15[0], root)
    top = json.loads((root / "config.json").read_text())
    for key, value in (("s2", True), ("vision_resolution", 448)):
        (root / "config.json").write_text(json.dumps({**top, key: value}))
        with pytest.raises(CheckpointLayoutError, match=f"{key}={value!r}"):
            load_released(root)
