"""VILA's training stages: configs and `paper` / `mini` presets (paper §2 "Training stages", the released scripts).

    vila_projector   stage 0: projector only, on image-caption pairs (LLaVA align data, "plain" template)
    vila_pretrain    stage 1: LLM + projector on MMC4-core interleaved documents and COYO pairs
    vila_sft         stage 2: everything but the vision tower on LLaVA conversations (+ text-only instructions)
    vila_vision_pretrain   mini-world stand-in for the released CLIP ViT-L/14 (end of this file)
    vila_llm_pretrain      mini-world stand-in for the released Llama-2-7B (LaVIT's llm_pretrain task, VILA's shapes)

`paper`: the released scripts' recipe (LR 1e-3 / 5e-5 / 2e-5, global batch 256 / 1024 / 128, length 2048 / 4096 /
4096, 1 epoch, cosine with warm-up ratio 0.03, weight decay 0, bf16) with the VILA-7B model. The trainer counts
steps, not epochs: `loop.steps` is one epoch of the paper's data at that batch (the data sizes are given with each
preset) and `optim.warmup_steps` is 3% of it. `mini`: the same stages on the mini world (harness/miniworld.py) at
CPU size, a few minutes per stage at most. The mini step counts are the shortest we measured to give a model that
uses the image (after 200 / 300 / 400 steps the SFT model's caption loss was the same with shuffled images, and its
VQA accuracy was the answer prior's; after 600 / 1000 / 1000 it answers from the image, see the family docstring).

Ablation switches (each a config key; the model-side ones live in `model` and reach `VilaConfig` unchanged):

    Table 1   train_llm (vila_pretrain: "PreT", vila_sft: "SFT"); model.projector.type=transformer|linear
    Table 3   data.blend (weights of "mmc4" and "coyo"; 0 switches one off), data.mmc4_format=interleaved|pairs
    §4.4      data.mmc4_format=reformatted (<im1><im2><txt1><txt2>)
    Table 4   data.joint_sft, data.text_ratio (vila_sft)
    Table 7   model.vision.image_size, model.projector.type=downsample_2x2
    Table 8   model.ablation.visual_expert
    Table 9   model.ablation.lora_rank

No torch import here: `python -m train --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.config import register_preset
from model.vila.configuration import VilaConfig, VisionConfig, vila_7b, vila_mini
from train.config import DistConfig, LoopConfig, OptimConfig, preset_group

# Where the table machinery builds the mini world (reproduce/table.py: RUNS/miniworld); the mini presets read it
# from there by default, so `python -m train vila_projector --config mini ...` works from the checkout root.
DEFAULT_MINIWORLD = "runs/miniworld"


# ---------------------------------------------------------------------------------------------
# Stage 0: projector initialisation.


@dataclass
class AlignDataConfig:
    files: list[str] = field(default_factory=list)  # LLaVA JSON/JSONL caption records (LLaVA-1.5's 558K align set)
    image_folder: str = ""  # where the records' "image" paths point ("" = next to the JSON file)
    template: str = "plain"  # conversation template: LLaVA's caption alignment renders <image>caption\n
    miniworld: str = ""  # a mini world root: its captions in this layout (used when `files` is empty)


@dataclass
class ProjectorStageConfig:
    model: VilaConfig = field(default_factory=vila_7b)
    text_tokenizer: str = ""  # local HF tokenizer folder (Llama-2's); "" = the mini world's (data.miniworld)
    # Weights the stage starts from (the paper: released Llama-2-7B and CLIP ViT-L/14-336). llm_path: a transformers
    # LLaMA folder, or a run whose checkpoints hold `language_model.*` (an llm_pretrain run); vision_tower_path: a
    # CLIPVisionModel folder / weights file, or a vila_vision_pretrain run. "random-init": random weights (tests).
    llm_path: str = ""
    vision_tower_path: str = ""
    seq_len: int = 2048  # model_max_length: positions after image expansion
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------------------------------------
# Stage 1: visual language pre-training.


@dataclass
class PretrainDataConfig:
    mmc4: list[str] = field(default_factory=list)  # MMC4 JSONL shards (official fields, module docstring of data.py)
    mmc4_image_root: str = ""  # folder of the documents' `image_name` files ("" = images inline as image_base64)
    mmc4_format: Literal["interleaved", "pairs", "reformatted"] = "interleaved"  # Table 3 / §4.4 ablations
    max_images_per_doc: int = 6  # the released loader's cap
    coyo: list[str] = field(default_factory=list)  # COYO tar shards (img2dataset layout)
    coyo_pairs_per_sample: int = 4  # pairs per sample, each trained as its own row (the released loader: 4)
    # Sampling weights of the two corpora, per sample (both carry ~4 images per sample, so 1:1 is the paper's
    # "roughly 1:1 image proportions", §4.1). Table 3: {"coyo": 1, "mmc4": 0}, {"mmc4": 1, "coyo": 0}, ...
    blend: dict[str, float] = field(default_factory=lambda: {"mmc4": 1.0, "coyo": 1.0})
    partition: Literal["sample", "shard"] = "sample"  # how ranks split the streams (train/data.py)
    miniworld: str = ""  # a mini world root: documents built from its train split (used for empty file lists)


@dataclass
class PretrainStageConfig:
    model: VilaConfig = field(default_factory=vila_7b)
    text_tokenizer: str = ""
    init_from: str = ""  # the vila_projector run this stage starts from (required; "random-init" for tests)
    train_llm: bool = True  # Table 1 "PreT": False = projector-only (prompt tuning) pre-training
    seq_len: int = 4096
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------------------------------------
# Stage 2: visual instruction tuning (SFT).


@dataclass
class SftDataConfig:
    files: list[str] = field(default_factory=list)  # LLaVA conversation JSON/JSONL (visual SFT blend)
    image_folder: str = ""
    joint_sft: bool = True  # Table 4: blend text-only instructions into the visual SFT data
    text_files: list[str] = field(default_factory=list)  # text-only instructions in the same layout (FLAN, 1M)
    text_ratio: float = 0.5  # share of text-only samples when joint_sft (not in the paper: 1M FLAN into the blend)
    template: str = ""  # conversation template; "" = model.conversation
    miniworld: str = ""  # a mini world root: its captions/questions (visual) and corpus QA (text) in this layout


@dataclass
class SftStageConfig:
    model: VilaConfig = field(default_factory=vila_7b)
    text_tokenizer: str = ""
    init_from: str = ""  # the vila_pretrain run this stage starts from (required; "random-init" for tests)
    train_llm: bool = True  # Table 1 "SFT": False = projector-only SFT (setting a)
    seq_len: int = 4096
    data: SftDataConfig = field(default_factory=SftDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------------------------------------
# Presets.


def _paper_optim(lr: float, steps: int) -> OptimConfig:
    """The released scripts: AdamW, cosine, warm-up ratio 0.03, no weight decay (HF Trainer defaults otherwise:
    betas (0.9, 0.999), eps 1e-8, max grad norm 1.0)."""
    return OptimConfig(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=max(1, round(0.03 * steps)), grad_clip=1.0)


def _paper_loop(steps: int, batch: int, micro: int) -> LoopConfig:
    return LoopConfig(steps=steps, global_batch_size=batch, micro_batch_size=micro, checkpoint_every=500)


# One epoch at the paper's batch sizes. Stage 0: LLaVA-1.5's 558K align pairs / 256. Stage 1: 25M MMC4-core images
# (~4 per document: ~6.25M documents) + 25M COYO images (4 per sample: ~6.25M samples) = ~12.5M samples / 1024.
# Stage 2: the SFT blend (~1M visual, paper §4.1) + 1M FLAN text-only / 128. Sizes from the paper's text, rounded.
PAPER_STEPS = {"vila_projector": 558_128 // 256, "vila_pretrain": 12_500_000 // 1024, "vila_sft": 2_000_000 // 128}


@register_preset(preset_group("vila_projector"), "paper")
def projector_paper_preset() -> ProjectorStageConfig:
    steps = PAPER_STEPS["vila_projector"]
    return ProjectorStageConfig(
        model=vila_7b(),
        seq_len=2048,
        optim=_paper_optim(1e-3, steps),
        loop=_paper_loop(steps, 256, 8),
        dist=DistConfig(strategy="auto", precision="bf16"),
    )


@register_preset(preset_group("vila_pretrain"), "paper")
def pretrain_paper_preset() -> PretrainStageConfig:
    steps = PAPER_STEPS["vila_pretrain"]
    return PretrainStageConfig(
        model=vila_7b(),
        seq_len=4096,
        optim=_paper_optim(5e-5, steps),
        loop=_paper_loop(steps, 1024, 4),
        dist=DistConfig(strategy="fsdp", precision="bf16", activation_checkpointing=True),
    )


@register_preset(preset_group("vila_sft"), "paper")
def sft_paper_preset() -> SftStageConfig:
    steps = PAPER_STEPS["vila_sft"]
    return SftStageConfig(
        model=vila_7b(),
        seq_len=4096,
        optim=_paper_optim(2e-5, steps),
        loop=_paper_loop(steps, 128, 4),
        dist=DistConfig(strategy="fsdp", precision="bf16", activation_checkpointing=True),
    )


def mini_model() -> VilaConfig:
    """`vila-mini` with the LLM shapes of LaVIT's mini `llm_pretrain` run (64 wide, 2 layers, MLP 128, RMSNorm eps
    1e-6, the mini world's 512 ids), so that run can stand in for Llama-2 (`llm_path`); a linear projector."""
    model = vila_mini()
    model.llm.intermediate_size = 128
    model.llm.rms_norm_eps = 1e-6
    # The pad id is the LLM embedding's padding_idx, a row that never gets a gradient: <unk> (0, Llama-2's pad),
    # not </s>, which ends every training sample. Pads themselves are masked out, so their id does not matter.
    model.llm.pad_token_id = 0
    return model


def _mini_optim(lr: float, steps: int) -> OptimConfig:
    return OptimConfig(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=max(1, round(0.03 * steps)), grad_clip=1.0)


def _mini_loop(steps: int, batch: int) -> LoopConfig:
    return LoopConfig(steps=steps, global_batch_size=batch, micro_batch_size=batch, checkpoint_every=max(1, steps // 2), progress=False)


def _mini_dist() -> DistConfig:
    return DistConfig(strategy="auto", device="cpu", precision="fp32")


@register_preset(preset_group("vila_projector"), "mini")
def projector_mini_preset() -> ProjectorStageConfig:
    """The mini world's caption records (12k: 3 per train image) at CPU size: 600 steps of 16 (LR 1e-3 as in the
    paper: only the projector trains)."""
    return ProjectorStageConfig(
        model=mini_model(),
        seq_len=128,
        data=AlignDataConfig(miniworld=DEFAULT_MINIWORLD),
        optim=_mini_optim(1e-3, 600),
        loop=_mini_loop(600, 16),
        dist=_mini_dist(),
    )


@register_preset(preset_group("vila_pretrain"), "mini")
def pretrain_mini_preset() -> PretrainStageConfig:
    """MMC4-format documents and COYO-format 4-pair samples from the mini world, 1:1; 1000 steps of 8 samples (a
    document is one sequence, a COYO sample four) of at most 384 positions (6 images x 36 tokens + text). LR 5e-4: the paper's 5e-5 is for a 7B model."""
    return PretrainStageConfig(
        model=mini_model(),
        seq_len=384,
        data=PretrainDataConfig(miniworld=DEFAULT_MINIWORLD),
        optim=_mini_optim(5e-4, 1000),
        loop=_mini_loop(1000, 8),
        dist=_mini_dist(),
    )


@register_preset(preset_group("vila_sft"), "mini")
def sft_mini_preset() -> SftStageConfig:
    """The mini world's visual conversations (a caption turn + two questions per train image) joint with text-only
    QA instructions from its corpus (ratio 0.2); 1000 steps of 8. LR 2e-4 (the paper's 2e-5 is for 7B)."""
    return SftStageConfig(
        model=mini_model(),
        seq_len=256,
        data=SftDataConfig(miniworld=DEFAULT_MINIWORLD, joint_sft=True, text_ratio=0.2),
        optim=_mini_optim(2e-4, 1000),
        loop=_mini_loop(1000, 8),
        dist=_mini_dist(),
    )


# ---------------------------------------------------------------------------------------------
# Mini-world stand-in for the released CLIP vision tower (not a stage of the paper).
#
#     vila_vision_pretrain   CLIP-style contrastive training of VILA's vision tower (transformers CLIPVisionModel
#                            of `model.vision`) against a small caption encoder; feeds vila_projector's
#                            `vision_tower_path`. Its `paper` preset refuses to run (the paper downloads CLIP).


@dataclass
class VisionPretrainDataConfig:
    shards: list[str] = field(default_factory=list)  # image-text tar shards; "" with data.miniworld: its shards
    meta_filter: dict[str, str] = field(default_factory=lambda: {"kind": "caption"})  # keep samples whose KEY.json matches
    miniworld: str = ""
    partition: Literal["sample", "shard"] = "sample"


@dataclass
class VisionPretrainStageConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)  # the tower trained here (= the VILA model's `vision`)
    embed_dim: int = 64  # joint embedding width
    text_width: int = 64  # caption encoder: byte embeddings, masked mean, linear (ours, not CLIP's text tower)
    text_max_len: int = 64  # caption bytes kept
    init_temperature: float = 0.07  # CLIP's initial softmax temperature, learned as log(1 / T)
    released_stand_in: bool = False  # True: refuse to run (the paper uses the released CLIP ViT-L/14-336)
    data: VisionPretrainDataConfig = field(default_factory=VisionPretrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)


@register_preset(preset_group("vila_vision_pretrain"), "paper")
def vision_pretrain_paper_preset() -> VisionPretrainStageConfig:
    """Stand-in only: the paper uses the released CLIP ViT-L/14-336 (pass it to vila_projector as vision_tower_path)."""
    return VisionPretrainStageConfig(
        vision=vila_7b().vision,
        embed_dim=768,
        text_width=768,
        released_stand_in=True,
        optim=OptimConfig(lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, warmup_steps=2000, grad_clip=1.0),
        loop=LoopConfig(steps=100_000, global_batch_size=32_768, micro_batch_size=256, checkpoint_every=1000),
        dist=DistConfig(strategy="auto", precision="bf16"),
    )


@register_preset(preset_group("vila_vision_pretrain"), "mini")
def vision_pretrain_mini_preset() -> VisionPretrainStageConfig:
    """The mini tower (48 px, 6x6 patches, 3 layers of 64) on the mini world's captions: 300 steps of 32 pairs (the
    micro-batch is the contrastive batch)."""
    return VisionPretrainStageConfig(
        vision=mini_model().vision,
        data=VisionPretrainDataConfig(miniworld=DEFAULT_MINIWORLD),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05, warmup_steps=10, grad_clip=1.0),
        loop=LoopConfig(steps=300, global_batch_size=32, micro_batch_size=32, checkpoint_every=150, progress=False),
        dist=_mini_dist(),
    )



# ---------------------------------------------------------------------------------------------
# Mini-world stand-in for the released Llama-2 (not a stage of the paper): LaVIT's `llm_pretrain` task (a text-only
# LlamaForCausalLM, causal LM on packed documents, checkpoint keys `language_model.*`) under a VILA stage name, so a
# VILA chain is self-contained (the table machinery keeps a chain inside one family). Its LLM shapes are those of
# `mini_model()`: the weights load into vila_projector through `llm_path`.

MINI_TEXT_SOURCES = ("shapes", "qa", "facts", "filler")  # the mini world's corpus (harness/miniworld.py)


from train.lavit.config import LlmPretrainDataConfig as _LavitLlmData  # noqa: E402
from train.lavit.config import LlmPretrainStageConfig as _LavitLlmStage  # noqa: E402


@dataclass
class LlmPretrainDataConfig(_LavitLlmData):
    # A mini world root, as in every other VILA stage: its corpus (text/<source>.jsonl for each source of
    # text_weights) when text_sources is empty, and its tokenizer when text_tokenizer is "".
    miniworld: str = ""


@dataclass
class LlmPretrainStageConfig(_LavitLlmStage):
    """LaVIT's `llm_pretrain` config with `data.miniworld` (README's mini chain: `--set data.miniworld=$W`)."""

    data: LlmPretrainDataConfig = field(default_factory=LlmPretrainDataConfig)


@register_preset(preset_group("vila_llm_pretrain"), "paper")
def llm_pretrain_paper_preset() -> LlmPretrainStageConfig:
    """Stand-in only: the paper starts from the released Llama-2-7B (vila_projector's llm_path)."""
    from dataclasses import fields

    from train.lavit.config import llm_pretrain_paper_preset as lavit_paper

    cfg = lavit_paper()
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "data"}
    return LlmPretrainStageConfig(**values, data=LlmPretrainDataConfig(**{f.name: getattr(cfg.data, f.name) for f in fields(cfg.data)}))


@register_preset(preset_group("vila_llm_pretrain"), "mini")
def llm_pretrain_mini_preset() -> LlmPretrainStageConfig:
    """LaVIT's mini llm_pretrain recipe on the mini world's corpus and tokenizer (as Table 1's LaVIT chain trains
    it: same sources, weights and tokenizer), 150 steps of 8 x 128 tokens; the LLM of `mini_model()`. The corpus
    and the tokenizer come from `data.miniworld` (text_sources and text_tokenizer left empty)."""
    from dataclasses import fields

    from train.lavit.config import llm_pretrain_mini_preset as lavit_mini

    base = lavit_mini()
    cfg = LlmPretrainStageConfig(**{f.name: getattr(base, f.name) for f in fields(base) if f.name != "data"})
    llm, vila = cfg.model.llm, mini_model().llm
    llm.hidden_size, llm.num_layers, llm.num_heads, llm.num_kv_heads = vila.hidden_size, vila.num_layers, vila.num_heads, vila.num_kv_heads
    llm.intermediate_size, llm.text_vocab_size, llm.rms_norm_eps = vila.intermediate_size, vila.vocab_size, vila.rms_norm_eps
    llm.max_position_embeddings, llm.rope_theta = vila.max_position_embeddings, vila.rope_theta
    cfg.text_tokenizer = ""
    cfg.synthetic.enabled = False
    cfg.data = LlmPretrainDataConfig(
        text_weights={"shapes": 0.3, "qa": 0.3, "facts": 0.2, "filler": 0.2},
        miniworld=DEFAULT_MINIWORLD,
    )
    cfg.loop.steps = 150
    return cfg
