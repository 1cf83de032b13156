"""The mini LaVIT chain every mini table shares, and the same chain at paper scale.

    mini release encoder -> tokenizer (stage 1a) -> unified (stage 2)     (+ llm_pretrain -> unified)

Stage 1a loads the mini release's ViT (`model/mini_release/`, `reproduce/mini_release.py`) through `encoder_path`,
the key and loader that take the released EVA-CLIP weights at paper scale: the stand-in is committed, not retrained.

`MINI_CHAIN` is Table 1's model. An ablation row is the same chain with one switch added to a stage
(`mini_chain(unified=("model.ablation.freeze_llm=true",))`): the table machinery names every run by the hash of
its config and its upstream runs, so the unchanged prefix (and, for the shared row, the whole chain) is the very
same run directory as Table 1's, trained once and reused by every table.

`paper_chain(...)` declares the paper-scale counterpart with the `paper` presets (stage 1a -> stage 2 on the
benchmark data under `--data-root`, released encoder and LLM weights): it is resolved by `plan_chain` (hashes,
run directories) but needs a GPU cluster to run.
"""

from __future__ import annotations

import json

from pathlib import Path

from reproduce.compare import BandRule
from reproduce.table import Column, Profile, StageRun, Trained

SHARDS = "[{data}/shards/train-*.tar]"
TEXT = '{"shapes": ["{data}/text/shapes.jsonl"], "qa": ["{data}/text/qa.jsonl"], "facts": ["{data}/text/facts.jsonl"], "filler": ["{data}/text/filler.jsonl"]}'
TEXT_WEIGHTS = '{"shapes": 0.3, "qa": 0.3, "facts": 0.2, "filler": 0.2}'

# The mini world's own text tokenizer (byte-level BPE trained on its training texts, harness/miniworld.py) and the
# matching text vocabulary of the LLM (text ids, then [IMG], [/IMG] and the visual codes: the paper's layout).
TOKENIZER = ("text_tokenizer={data}/tokenizer", "model.llm.text_vocab_size=512")


def _release_file(part: str) -> str:
    """'{release}/<file>' of a mini release part (its name carries its hash); a placeholder file name that stage
    1a's input check reports by name when the release has no such part."""
    from reproduce.release import MANIFEST, RELEASE_DIR

    manifest = RELEASE_DIR / MANIFEST
    parts = json.loads(manifest.read_text())["parts"] if manifest.is_file() else {}
    return "{release}/" + parts.get(part, {}).get("file", f"missing-{part}.safetensors")

# The LLM stand-in's own mixture: the scene questions weighted up (stage 2 keeps TEXT_WEIGHTS). Set with the step
# count on the stand-in's competence (reproduce/mini_release.py: held-out scene questions in words, recall of the
# facts, perplexity) before any table was rerun: at TEXT_WEIGHTS and 1,000 steps it answered yes/no scene questions
# at chance (49.8 %); at 3,000 steps 67.3 %; at these weights 88.0 % after 3,000 steps, 99.7 % after 5,000 (recall
# 100, open questions 100, perplexity 1.60 against 1.45).
LLM_TEXT_WEIGHTS = {"shapes": 0.1, "qa": 0.7, "facts": 0.15, "filler": 0.05}  # VILA's stand-in takes the same
LLM_PRETRAIN_STEPS = 5000  # 27 ms a step on 2 cores
LLM_PRETRAIN = StageRun(
    "llm_pretrain",
    overrides=("synthetic.enabled=false", f"data.text_sources={TEXT}", f"data.text_weights={json.dumps(LLM_TEXT_WEIGHTS)}", *TOKENIZER,
               f"loop.steps={LLM_PRETRAIN_STEPS}"),
)
STAGE_1A = StageRun(
    "tokenizer",
    # Set on stage 1a's competence on held-out images (reproduce/mini_release.py), before any ablation was looked at:
    # batch 32 (the preset's 4 used 3 of 64 codes), 400 continuous steps, then VQ from a k-means of 2,048 images.
    overrides=("synthetic.enabled=false", f"data.shards={SHARDS}", f"encoder_path={_release_file('encoder')}", "loop.steps=1000",
               "loop.global_batch_size=32", "loop.micro_batch_size=32", "vq_start_step=400", "kmeans_images=2048"),
)
STAGE_2 = StageRun(
    "unified",
    overrides=(
        "synthetic.enabled=false",
        f"data.understanding_shards={SHARDS}",
        f"data.generation_shards={SHARDS}",
        'data.image_text_filter={"kind": "caption"}',  # LaVIT's image-text data are captions
        f"data.text_sources={TEXT}",
        f"data.text_weights={TEXT_WEIGHTS}",
        *TOKENIZER,
        "loop.steps=1500",
        "loop.global_batch_size=8",
        "loop.micro_batch_size=8",
        "data.text_to_image_text=[1.0, 2.0]",
    ),
    inputs=(("tokenizer_checkpoint", "tokenizer"), ("llm_path", "llm_pretrain")),
)

MINI_CHAIN = (LLM_PRETRAIN, STAGE_1A, STAGE_2)

# Stage 1b at mini scale: the pixel decoder on the mini world's training images, conditioned on the reconstructions
# of MINI_CHAIN's stage-1a tokenizer. It diffuses in pixel space at 32 px (`latent_space=pixels`: the paper's VAE is
# a downloaded part the mini world does not have), with cross-attention at 16 and 8 px only (full-resolution
# attention costs 4-7x the CPU time of the whole rest of the U-Net). 500 steps of 16 images (each of the 4,000
# training images about twice; a few CPU minutes).
PIXEL_DECODER_32PX = (
    "model.pixel_decoder.latent_space=pixels",
    "model.pixel_decoder.image_size=32",
    "model.pixel_decoder.unet_block_out_channels=[32, 64, 64]",
    'model.pixel_decoder.unet_down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]',
    'model.pixel_decoder.unet_up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]',
)
# The context projection (the tokenizer's unet_proj, trained in stage 1b since 2026-12-07) takes 20x the U-Net's peak
# LR: it starts from stage 1a's random init and must scale the mini x_rec (mean |x| 0.035) up. Set on the decoder's
# use of its conditioning (diffusion loss with the image's own context against another image's, test images, t = 100):
# 0.0320 vs 0.0328 at the U-Net's LR, 0.0319 vs 0.0364 at 0.02 (one try each), before Table 2 was rerun.
STAGE_1B = StageRun(
    "pixel_decoder",
    overrides=("synthetic.enabled=false", f"data.shards={SHARDS}", *PIXEL_DECODER_32PX,
               "loop.steps=500", "loop.global_batch_size=16", "loop.micro_batch_size=16", "loop.checkpoint_every=100",
               'optim.group_lr={"context": 0.02}'),
    inputs=(("tokenizer_checkpoint", "tokenizer"),),
)
# Table 1's chain with the pixel decoder beside stage 2: the same run directories for every stage of MINI_CHAIN (a
# run's name hashes its config and its inputs, not its place in the chain), stage 2 still last (the evaluated run).
MINI_CHAIN_WITH_DECODER = (LLM_PRETRAIN, STAGE_1A, STAGE_1B, STAGE_2)


def _with(run: StageRun, extra: tuple[str, ...]) -> StageRun:
    return StageRun(run.stage, overrides=run.overrides + tuple(extra), inputs=run.inputs, name=run.name, preset=run.preset)


def mini_chain(tokenizer: tuple[str, ...] = (), unified: tuple[str, ...] = ()) -> tuple[StageRun, ...]:
    """MINI_CHAIN with extra `--set` overrides on stage 1a and/or stage 2 (an ablation switch). Without any, it is
    MINI_CHAIN itself (the same run directories)."""
    return (LLM_PRETRAIN, _with(STAGE_1A, tokenizer), _with(STAGE_2, unified))


# ---------------------------------------------------------------------------------------------
# Evaluation columns computed from the saved predictions of the mini tasks.


def caption_hits(attribute: str):
    """Share of the saved captions that name the image's shape (or colour)."""

    def derive(ctx, task_dir: Path) -> float:
        from eval.baselines import caption_hit_rate

        return caption_hit_rate(ctx.world, task_dir / "predictions.jsonl", attribute)

    return derive


def vqa_by_type(answer_type: str):
    """VQA accuracy on the questions of one answer type, from the saved predictions."""

    def derive(ctx, task_dir: Path) -> float:
        from eval.baselines import vqa_accuracy

        from reproduce.table import task_limit

        limit = task_limit("mini_vqa", ctx.profile)
        return vqa_accuracy(ctx.world, ctx.data_root, limit, predictions_path=task_dir / "predictions.jsonl", answer_type=answer_type)

    return derive


def vqa_cells(ctx, labels: tuple[str, str, str], **how) -> dict[str, float]:
    """VQA accuracy on the table's mini_vqa questions, overall, on yes/no and on colour/shape, under the three column
    `labels`: of saved predictions (`predictions_path=`) or of a blind baseline (`blind=`), as
    `eval.baselines.vqa_accuracy` scores them."""
    from eval.baselines import vqa_accuracy

    from reproduce.table import task_limit

    limit = task_limit("mini_vqa", ctx.profile)
    return {label: vqa_accuracy(ctx.world, ctx.data_root, limit, answer_type=answer_type, **how)
            for label, answer_type in zip(labels, (None, "yes/no", "other"))}  # fmt: skip


def image_shuffle_cells(ctx, row: str, family: str, stage: str, labels: tuple[str, str, str], **options) -> dict[str, float]:
    """The control of a table's model (row `row`, its run of `stage`): the same questions with the test images
    permuted among them (task mini_vqa_image_shuffle), scored as `vqa_cells`. `options` go to the evaluation."""
    from reproduce.table import evaluate_for_row, task_limit

    out = ctx.eval_dirs[row]
    evaluate_for_row(ctx, ["mini_vqa_image_shuffle"], family, ctx.run_dirs[row][stage], out,
                     limit=task_limit("mini_vqa_image_shuffle", ctx.profile), **options)  # fmt: skip
    return vqa_cells(ctx, labels, predictions_path=out / "mini_vqa_image_shuffle" / "predictions.jsonl")


def chance_caption_cells(ctx) -> dict[str, float]:
    """Template captions with a random shape and colour, on the table's mini_caption images: the columns "Caption
    CIDEr", "Shape named" and "Colour named"."""
    from eval.baselines import chance_caption_scores

    from reproduce.table import task_limit

    scores = chance_caption_scores(ctx.world, ctx.data_root, task_limit("mini_caption", ctx.profile))
    return {"Caption CIDEr": scores["CIDEr"] * 100, "Shape named": scores["shape"] * 100, "Colour named": scores["color"] * 100}


# Every mini table evaluates the same questions, so a run shared between tables has one evaluation: captions of the
# 1,000 test images, and the first 3,000 test questions (3 per image; 808 yes/no, where the first 1,000 had 50).
MINI_EVAL_LIMIT = 1000
MINI_TASK_LIMITS = {"mini_vqa": 3000, "mini_vqa_image_shuffle": 3000}

# The three columns of the paper's ablation tables (Flickr CIDEr, VQAv2, OKVQA) at mini scale: zero-shot captions of
# the held-out test images, VQA on all test questions, and the open-answer (colour / shape) questions, the mini
# world's counterpart of OK-VQA's open answers. Documented per table in results/mini/<table>.yaml.
ABLATION_COLUMNS = (
    Column("Caption CIDEr", "mini_caption", "CIDEr"),
    Column("VQA accuracy", "mini_vqa", "vqa_accuracy"),
    Column("VQA colour/shape", "mini_vqa", "", derive=vqa_by_type("other")),
)
# Their regression bands (results/mini/<table>.band.json): 10% of the value, but at least 10 CIDEr points and 3 VQA
# points, so that a weak row (a few % VQA) is not held to a one-point band. A judgment, not a measured run-to-run
# spread: widen it (and say why) if CI on another machine shows more.
ABLATION_BAND = {
    "Caption CIDEr": BandRule(relative=0.1, floor=10.0),
    "VQA accuracy": BandRule(relative=0.1, floor=3.0),
    "VQA colour/shape": BandRule(relative=0.1, floor=3.0),
}
# The same three at paper scale (the benchmarks under --data-root, as in Table 1's paper profile).
PAPER_ABLATION_COLUMNS = (
    Column("Flickr", "flickr30k_test", "CIDEr"),
    Column("VQAv2", "vqav2_val", "vqa_accuracy"),
    Column("OKVQA", "okvqa_val", "vqa_accuracy"),
)


# ---------------------------------------------------------------------------------------------
# Paper scale: the same two stages with the `paper` presets (Table 9) on the data under --data-root.
#
#   {data}/pretrain/*.tar            [image; text] pairs (CC3M/12M, SBU, BLIP-CapFilt) for stages 1a and 2
#   {data}/laion_aesthetics/*.tar    [text; image] pairs for stage 2
#   {data}/redpajama/<subset>/*.jsonl  the Table 5 text subsets
#   {data}/weights/clip_vit_l14.safetensors   the ablations' visual encoder (§4.3: CLIP ViT-L/14)
#   {data}/weights/llama-7b/         LLaMA-7B (transformers folder; its tokenizer is the text tokenizer)

REDPAJAMA_SUBSETS = ("c4", "github", "wikipedia", "books", "arxiv", "stackexchange")
PAPER_TEXT = "{" + ", ".join(f'"{s}": ["{{data}}/redpajama/{s}/*.jsonl"]' for s in REDPAJAMA_SUBSETS) + "}"

PAPER_STAGE_1A = StageRun(
    "tokenizer",
    overrides=("data.shards=[{data}/pretrain/*.tar]", "encoder_path={data}/weights/clip_vit_l14.safetensors"),
)
PAPER_STAGE_2 = StageRun(
    "unified",
    overrides=(
        "data.understanding_shards=[{data}/pretrain/*.tar]",
        "data.generation_shards=[{data}/laion_aesthetics/*.tar]",
        f"data.text_sources={PAPER_TEXT}",
        "llm_path={data}/weights/llama-7b",
        "text_tokenizer={data}/weights/llama-7b",
    ),
    inputs=(("tokenizer_checkpoint", "tokenizer"),),
)


def paper_chain(tokenizer: tuple[str, ...] = (), unified: tuple[str, ...] = ()) -> tuple[StageRun, ...]:
    """Stage 1a -> stage 2 at paper scale with an ablation switch (the `paper` presets; needs a GPU cluster)."""
    return (_with(PAPER_STAGE_1A, tokenizer), _with(PAPER_STAGE_2, unified))


# ---------------------------------------------------------------------------------------------
# A two-row ablation table (Tables 6, 7a, 7b, 8): one switched row against Table 1's model.


def ablation_profiles(
    key: str,
    switched: str,
    shared: str,
    describe: str,
    tokenizer: tuple[str, ...] = (),
    unified: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (0,),
) -> dict[str, Profile]:
    """The `mini` and `paper` profiles of a table whose row `switched` is the chain with the `--set` overrides
    `tokenizer` (stage 1a) and `unified` (stage 2), and whose row `shared` is the unchanged chain (at mini scale
    Table 1's model itself, the same run directories). `describe` says what the switch is. `seeds`: stage-2 seeds
    of both mini rows (the cells are their means; the spread is reported beside)."""
    mini = Profile(
        rows={
            switched: Trained("lavit", mini_chain(tokenizer, unified), seeds=seeds),
            shared: Trained("lavit", MINI_CHAIN, seeds=seeds),
        },
        columns=ABLATION_COLUMNS,
        reference=f"mini/{key}",
        eval_limit=MINI_EVAL_LIMIT,
        task_limits=MINI_TASK_LIMITS,
        band_rules=ABLATION_BAND,
        describe=f"Mini world, zero-shot on held-out test images; {describe} (the rest shared with Table 1).",
    )
    paper = Profile(
        rows={switched: Trained("lavit", paper_chain(tokenizer, unified)), shared: Trained("lavit", paper_chain())},
        columns=PAPER_ABLATION_COLUMNS,
        reference=key,
        mode="numeric",
        preset="paper",
        data="data-root",
        describe="The paper's ablation setting (Appendix B.2), zero-shot.",
    )
    return {"mini": mini, "paper": paper}
