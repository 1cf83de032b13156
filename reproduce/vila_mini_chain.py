"""The mini VILA chain every mini VILA table shares (the README's chain, through the table machinery).

    vila_llm_pretrain ─┐
                       ├─> vila_projector (0) -> vila_pretrain (1) -> vila_sft (2)
    vila_vision_pretrain┘

Every stage starts from its `mini` preset with `data.miniworld={data}` (the table's mini world; its build hash is in
every run's identity). One change from the presets: the LLM stand-in trains 1,000 steps (its preset: 150), the step
count LaVIT's mini chain set for its LLM stand-in on the same corpus and tokenizer on held-out perplexity
(`reproduce/mini_chain.py` LLM_PRETRAIN), before any VILA table was looked at; at 150 steps the text-only tables
(Table 6) would compare a model that has not learned the corpus' facts.

`vila_chain(pretrain=(...), sft=(...))` is the chain with `--set` switches on stage 1 and/or stage 2 (an ablation
row); the unchanged prefix is the same run directories (the machinery names a run by the hash of its config and of
its upstream runs), so a table trains only the stages its rows switch. `VILA_CHAIN[:3]` (up to stage 0) is the
model whose LLM is the stand-in itself: stage 0 trains the projector only, so its `language_model.*` weights are
the LLM stand-in's (tests/test_vila_stages.py checks it), and evaluating it text-only measures the LLM before VILA.
"""

from __future__ import annotations

from pathlib import Path

from reproduce.table import StageRun

WORLD = ("data.miniworld={data}",)

VILA_LLM = StageRun("vila_llm_pretrain", overrides=(*WORLD, "loop.steps=1000"))
VILA_VISION = StageRun("vila_vision_pretrain", overrides=WORLD)
VILA_PROJECTOR = StageRun(
    "vila_projector", overrides=WORLD, inputs=(("llm_path", "vila_llm_pretrain"), ("vision_tower_path", "vila_vision_pretrain"))
)
VILA_PRETRAIN = StageRun("vila_pretrain", overrides=WORLD, inputs=(("init_from", "vila_projector"),))
VILA_SFT = StageRun("vila_sft", overrides=WORLD, inputs=(("init_from", "vila_pretrain"),))

VILA_CHAIN = (VILA_LLM, VILA_VISION, VILA_PROJECTOR, VILA_PRETRAIN, VILA_SFT)
# Up to stage 0: the LLM stand-in unchanged (frozen in stage 0) beside the vision tower and the projector.
VILA_CHAIN_STAGE0 = VILA_CHAIN[:3]
VILA_CHAIN_STAGE1 = VILA_CHAIN[:4]


def _with(run: StageRun, extra: tuple[str, ...]) -> StageRun:
    return StageRun(run.stage, overrides=run.overrides + tuple(extra), inputs=run.inputs, name=run.name, preset=run.preset)


# A second LLM stand-in, the mini counterpart of Vicuna-1.5 (VILA Table 11). Vicuna is Llama-2 tuned on conversations;
# the mini one is the first stand-in's recipe (architecture, tokenizer, steps, seed) with the question-answer source's
# weight tripled in the corpus blend (its share 30 % -> 56 %; the other sources keep their proportions). Set once,
# before Table 11 was first run; the first stand-in's blend is VILA's mini preset's.
VICUNA_LLM = _with(VILA_LLM, ('data.text_weights={"shapes": 0.3, "qa": 0.9, "facts": 0.2, "filler": 0.2}',))


def vila_chain(projector: tuple[str, ...] = (), pretrain: tuple[str, ...] = (), sft: tuple[str, ...] = (),
               upto: str = "vila_sft", llm: StageRun = VILA_LLM) -> tuple[StageRun, ...]:  # fmt: skip
    """VILA_CHAIN with `--set` switches on stage 0, 1 and/or 2, cut after the stage `upto`, on the LLM stand-in `llm`
    (another backbone: VILA Table 11); without switches the very same runs."""
    chain = (llm, VILA_VISION, _with(VILA_PROJECTOR, projector), _with(VILA_PRETRAIN, pretrain), _with(VILA_SFT, sft))
    names = [r.key for r in chain]
    return chain[: names.index(upto) + 1]


# ---------------------------------------------------------------------------------------------
# Evaluation limits shared by the mini VILA tables (a run shared between tables has one evaluation cache).

VILA_EVAL_LIMIT = 500  # mini_caption*: the first 500 test images
VILA_TASK_LIMITS = {"mini_vqa": 1500, "mini_vqa_0shot": 1500, "mini_vqa_4shot": 500, "mini_caption_4shot": 200,
                    "mini_knowledge": None}  # fmt: skip


def held_out_perplexity(run_dir: Path, world) -> float:
    """Perplexity of the model's LLM (text only) on held-out documents of the mini world's corpus sources, as
    `reproduce/mini_release.py` measures the LLM stand-in (`reproduce.competence.held_out_perplexity`)."""
    from eval.lm_adapter import text_lm
    from model.families import get_family
    from reproduce.competence import held_out_perplexity as perplexity

    return perplexity(text_lm(get_family("vila").load(str(run_dir), device="cpu")), world)
