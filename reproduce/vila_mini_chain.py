"""The mini VILA chain every mini VILA table shares (the README's chain, through the table machinery).

    vila_llm_pretrain ─┐
                       ├─> vila_projector (0) -> vila_pretrain (1) -> vila_sft (2)
    vila_vision_pretrain┘

Every stage starts from its `mini` preset with `data.miniworld={data}` (the table's mini world; its build hash is in
every run's identity). Three changes from the presets, each set on competence (a stand-in's or the chain's), not on
a table's verdict:
- the LLM stand-in trains LLM_PRETRAIN_STEPS (5,000; its preset: 150), the step count LaVIT's mini chain set for
  its LLM stand-in on the same corpus and tokenizer on held-out perplexity (`reproduce/mini_chain.py`
  LLM_PRETRAIN), before any VILA table was looked at; at 150 steps the text-only tables (Table 6) would compare a
  model that has not learned the corpus' facts;
- the vision tower stand-in (CLIP's counterpart) trains 3,000 steps (VISION_STEPS; its preset: 300). At 300 steps a
  linear probe on its frozen test-image features reads shape at 48.3 % (colour 98.7 %; chance 33 %) and the chain's
  final model answers shape questions at 41.5 %: every table compared models that could not see form. At 3,000 steps
  (167 s) the probe reads shape at 97.6 % (colour 99.6 %), and the chain with only that change answers Table 5's
  questions at 94.7 % (shape 96.2 %; SFT seed 0), both measured before any table was regenerated with it;
- SFT (stage 2) trains 2,000 steps (SFT_STEPS; its preset: 1,000). At 1,000 steps the chain's final model answers
  yes/no at 79.6 % (target 85): it reads "is no {shape} present?" as "is a ... present?" (14 of 89 right; 0-15 % on
  its own SFT questions of that phrasing, `python -m reproduce.vqa_forms`), i.e. SFT has not fitted its data.
  From the same stage-1 run, 2,000 steps give VQA 96.2 / yes/no 91.0 and 3,000 give 97.5 / 96.3 (captions CIDEr
  430.3 / 430.5, shape named 96.4 / 96.4 %, colour 99.6 / 99.6 %, image shuffle 31.4 / 31.0): both meet every
  competence target, and 2,000 is the cheaper (157 s against 230 s per SFT run, about 24 SFT runs over the VILA
  tables). Set on those measures before any table was regenerated with it.

`vila_chain(pretrain=(...), sft=(...))` is the chain with `--set` switches on stage 1 and/or stage 2 (an ablation
row); the unchanged prefix is the same run directories (the machinery names a run by the hash of its config and of
its upstream runs), so a table trains only the stages its rows switch. `VILA_CHAIN[:3]` (up to stage 0) is the
model whose LLM is the stand-in itself: stage 0 trains the projector only, so its `language_model.*` weights are
the LLM stand-in's (tests/test_vila_stages.py checks it), and evaluating it text-only measures the LLM before VILA.
"""

from __future__ import annotations

import json
from pathlib import Path

from reproduce.mini_chain import LLM_PRETRAIN_STEPS, LLM_TEXT_WEIGHTS
from reproduce.table import StageRun

WORLD = ("data.miniworld={data}",)

# The LLM stand-in (Llama-2's counterpart): the LaVIT chain's recipe for its stand-in (reproduce/mini_chain.py
# LLM_TEXT_WEIGHTS: the scene questions weighted up, 5,000 steps; set on its held-out competence, which it shares).
VILA_LLM = StageRun("vila_llm_pretrain",
                    overrides=(*WORLD, f"data.text_weights={json.dumps(LLM_TEXT_WEIGHTS)}", f"loop.steps={LLM_PRETRAIN_STEPS}"))
VISION_STEPS = 3000  # the vision tower stand-in's steps (the module docstring says why)
VILA_VISION = StageRun("vila_vision_pretrain", overrides=(*WORLD, f"loop.steps={VISION_STEPS}"))
VILA_PROJECTOR = StageRun(
    "vila_projector", overrides=WORLD, inputs=(("llm_path", "vila_llm_pretrain"), ("vision_tower_path", "vila_vision_pretrain"))
)
VILA_PRETRAIN = StageRun("vila_pretrain", overrides=WORLD, inputs=(("init_from", "vila_projector"),))
SFT_STEPS = 2000  # stage 2's steps (the module docstring says why)
VILA_SFT = StageRun("vila_sft", overrides=(*WORLD, f"loop.steps={SFT_STEPS}"), inputs=(("init_from", "vila_pretrain"),))

VILA_CHAIN = (VILA_LLM, VILA_VISION, VILA_PROJECTOR, VILA_PRETRAIN, VILA_SFT)
# Up to stage 0: the LLM stand-in unchanged (frozen in stage 0) beside the vision tower and the projector.
VILA_CHAIN_STAGE0 = VILA_CHAIN[:3]
VILA_CHAIN_STAGE1 = VILA_CHAIN[:4]


def _with(run: StageRun, extra: tuple[str, ...]) -> StageRun:
    return StageRun(run.stage, overrides=run.overrides + tuple(extra), inputs=run.inputs, name=run.name, preset=run.preset)


# A second LLM stand-in, the mini counterpart of Vicuna-1.5 (VILA Table 11). Vicuna is Llama-2 tuned on conversations;
# the mini one is the first stand-in's recipe (architecture, tokenizer, steps, seed) with the question-answer source's
# weight tripled in the corpus blend (its share 70 % -> 88 %; the other sources keep their proportions). Set once,
# before Table 11 was first run (then on a blend with 30 % qa: 56 %).
VICUNA_LLM = _with(VILA_LLM, (f"data.text_weights={json.dumps({**LLM_TEXT_WEIGHTS, 'qa': round(3 * LLM_TEXT_WEIGHTS['qa'], 6)})}",))


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
# mini_vqa: the first 3,000 test questions, LaVIT Table 1's set (808 yes/no). The first 1,500 hold only 162 yes/no
# questions (the question file lists them late), short of the >= 300 that issue 18's competence targets ask for.
VILA_TASK_LIMITS = {"mini_vqa": 3000, "mini_vqa_0shot": 1500, "mini_vqa_4shot": 500, "mini_caption_4shot": 200,
                    "mini_knowledge": None}  # fmt: skip


def held_out_perplexity(run_dir: Path, world) -> float:
    """Perplexity of the model's LLM (text only) on held-out documents of the mini world's corpus sources, as
    `reproduce/mini_release.py` measures the LLM stand-in (`reproduce.competence.held_out_perplexity`)."""
    from eval.lm_adapter import text_lm
    from model.families import get_family
    from reproduce.competence import held_out_perplexity as perplexity

    return perplexity(text_lm(get_family("vila").load(str(run_dir), device="cpu")), world)
