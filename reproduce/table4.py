"""LaVIT Table 4: forgetting of the LLM's knowledge in stage 2, by LLM learning rate and text proportion (App. B.1).

    python reproduce/table4.py [--profile mini] [--check] [--update-band]
    python reproduce/table4.py --profile paper --checkpoint DIR --data-root DIR [--cluster slurm] [--device cuda]

Writes `results/lavit_table4.csv/.md` and `results/lavit_table4.png` (bars per setting, seed range, chance line).

`mini` (default, CPU): the paper's three settings of stage 2, translated to the mini chain (`reproduce/mini_chain.py`,
whose stage 2 trains the LLM at `optim.group_lr={"llm": 5e-4}` with text : image-text = 1 : 2):

* higher LLM learning rate: `optim.group_lr={"llm": 1.5e-3}` (3x, the paper's 1.5e-4 / 5e-5), same mix;
* less text: `data.text_to_image_text=[1.0, 4.0]` (the text : image-text ratio halved, as the paper's 2:1 -> 1:1),
  same learning rate;
* the standard setting: Table 1's stage 2 itself (seed 0 is the very same run directory; nothing retrained);

each at stage-2 seeds 0 and 1 (`Trained(seeds=...)`: `loop.seed`; seed 0 = the chain's default), since the
differences are a few questions. The base LLM row is the chain's `llm_pretrain` run (the stand-in for LLaMA-7B),
evaluated as a text-only LLM (`model/lavit/checkpoints.py`, layout "llm run"). A setting's row is the mean over its
seeds; each seed's value and the spread (max - min) are in the result's "Seeds" section, as in every seeded table.

Columns: `Knowledge` = `mini_knowledge` (the mini world's invented facts as MMLU-format questions, 5-shot through
lm-eval, all 81 test questions). `Recall` = `mini_knowledge_recall` (the same 81 facts as sentence completions in the
corpus' words, scored over the same four options, 0-shot through lm-eval): the base LLM holds the facts (Recall) but
cannot answer them in the MMLU letter format (Knowledge at chance; `reproduce/mini_release.py`), so Recall is the
column where forgetting can show at this scale. Humanities / STEM / Social Sciences / Other / Average =
the real MMLU (`../shared/data/mmlu`), 5-shot through lm-eval, the first 5 test questions of each of the 57
subjects (285 questions, to fit the time budget; the identity of the cached result includes the limit). The mini
model's 512-id tokenizer and 512-token context cut every 5-shot MMLU prompt from the left (the adapter says so),
and it is at chance (25%) on MMLU: reported as measured. LR L and Text are the settings, read from each run's config.

The paper's claims (results/mini/lavit_table4.yaml) are reported, not gated: each compares the seed means, and a
difference no larger than the seed spread is "undecided (within seed spread)" (`reproduce/compare.py`). `--check` gates on every cell being
measured and on the regression band of a previous mini run (`results/mini/lavit_table4.band.json`, `--update-band`).

`paper`: the released LaVIT (`--checkpoint`, the final setting LR_L 5e-5, 2:1) and the two other settings trained
with the `paper` presets on the data under `--data-root` (needs a GPU cluster), on MMLU under `DIR/mmlu`, compared
with the printed numbers. The LLaMA-7B row is the LLaMA paper's and stays reference-only.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.compare import BandRule
from reproduce.mini_chain import LLM_PRETRAIN, mini_chain, paper_chain
from reproduce.table import Column, Profile, Released, TableSpec, Trained, main, register_table

# Stage-2 switches (appended after the chain's own overrides, so they win).
HIGH_LLM_LR = ('optim.group_lr={"llm": 0.0015}',)
LESS_TEXT = ("data.text_to_image_text=[1.0, 4.0]",)
SEEDS = (0, 1)
MMLU_LIMIT = 5  # questions per subject (of 57)
CHANCE = 25.0  # four choices

BASE = "Base LLM (llm_pretrain)"
# (row label, stage-2 switches), in the paper's row order; the last is Table 1's stage 2.
SETTINGS = (
    ("LR_L 1.5e-3, text 33%", HIGH_LLM_LR),
    ("LR_L 5e-4, text 20%", LESS_TEXT),
    ("LR_L 5e-4, text 33% (Table 1)", ()),
)
MMLU_COLUMNS = (("Humanities", "accuracy/Humanities"), ("STEM", "accuracy/STEM"), ("Social Sciences", "accuracy/Social Sciences"),
                ("Other", "accuracy/Other"), ("Average", "accuracy"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Columns read from the run's config (the settings that identify a row).


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run has no config.yaml")
    return yaml.safe_load(path.read_text())


def llm_lr(ctx, run_dir: Path) -> float:
    """The LLM's peak learning rate: stage 2's `optim.group_lr.llm` (else `optim.lr`), the base LLM's `optim.lr`."""
    optim = _run_config(run_dir)["optim"]
    return float((optim.get("group_lr") or {}).get("llm", optim["lr"]))


def text_share(ctx, run_dir: Path) -> float:
    """Percent of stage 2's drawn documents that are text-only (`data.text_to_image_text`); 100 for the base LLM."""
    data = _run_config(run_dir)["data"]
    if "text_to_image_text" not in data:
        return 100.0
    text, image_text = (float(x) for x in data["text_to_image_text"])
    return 100.0 * text / (text + image_text)


BAR_COLUMNS = ("Knowledge", "Recall", "Average")


def _bars(ctx, path: Path) -> Path:
    from reproduce.figures import BarGroup, bars

    groups = []
    for label in (BASE, *(s for s, _ in SETTINGS)):
        seeds = list(ctx.seed_cells.get(label, {}).values()) or [ctx.measured[label]]
        cells = ctx.measured[label]
        groups.append(BarGroup(
            label=label, values=[cells[c] for c in BAR_COLUMNS],
            low=[min(r[c] for r in seeds) if len(seeds) > 1 else None for c in BAR_COLUMNS],
            high=[max(r[c] for r in seeds) if len(seeds) > 1 else None for c in BAR_COLUMNS],
        ))  # fmt: skip
    return bars(groups, ["mini_knowledge (81 q, MMLU format)", "fact recall (81 q, 0-shot)", f"real MMLU 5-shot ({MMLU_LIMIT}/subject)"], path,
                title=f"Mini LaVIT stage 2: LLM knowledge by setting (mean of seeds {', '.join(map(str, SEEDS))}; bar: seed range)",
                ylabel="accuracy %", lines={"chance": CHANCE})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Declarations.


def _mini_rows() -> dict:
    rows: dict = {BASE: Trained("lavit", (LLM_PRETRAIN,))}
    for setting, switch in SETTINGS:
        rows[setting] = Trained("lavit", mini_chain(unified=switch), seeds=SEEDS)
    return rows


MINI = Profile(
    rows=_mini_rows(),
    columns=(
        Column("LR L", "", "", derive=llm_lr),
        Column("Text", "", "", derive=text_share),
        Column("Knowledge", "mini_knowledge", "accuracy"),
        Column("Recall", "mini_knowledge_recall", "accuracy"),
        *(Column(label, "mmlu", metric) for label, metric in MMLU_COLUMNS),
    ),
    reference="mini/lavit_table4",
    task_limits={"mmlu": MMLU_LIMIT},
    task_data={"mmlu": "../shared/data"},  # the real MMLU beside the checkout (as eval/mmlu.py's default)
    band_rules={
        # Settings: exact (a changed setting is a changed table). Accuracies: one mini_knowledge question is 1.2
        # points, one MMLU question 0.35; the floors allow a few questions to flip (a judgment, not a measured spread).
        "LR L": BandRule(relative=0.0, floor=1e-9),
        "Text": BandRule(relative=0.0, floor=1e-3),
        "Knowledge": BandRule(relative=0.1, floor=5.0),
        "Recall": BandRule(relative=0.1, floor=5.0),
        **{label: BandRule(relative=0.1, floor=5.0) for label, _ in MMLU_COLUMNS[:-1]},
        "Average": BandRule(relative=0.1, floor=3.0),
    },
    describe=(
        "Mini LaVIT, stage 2 at three settings x seeds (the base LLM: the llm_pretrain run). Knowledge: the mini world's "
        f"facts (mini_knowledge, 81 questions, 5-shot, MMLU letter format); Recall: the same facts as sentence "
        f"completions over the same four options (mini_knowledge_recall, 0-shot); MMLU: the real one, 5-shot, {MMLU_LIMIT} questions per subject "
        f"(285), contexts cut to the model's 512 tokens; chance is {CHANCE:g}% on all three. Settings: mean of seeds {SEEDS}."
    ),
    figure=_bars,
)

PAPER_COLUMNS = tuple(Column(label, "mmlu", metric) for label, metric in MMLU_COLUMNS)
PAPER = Profile(
    rows={
        "LaVIT-7B (LR_L 1.5e-4, 66%:33%)": Trained("lavit", paper_chain(unified=('optim.group_lr={"llm": 0.00015}',))),
        "LaVIT-7B (LR_L 5e-5, 50%:50%)": Trained("lavit", paper_chain(unified=("data.text_to_image_text=[1.0, 1.0]",))),
        "LaVIT-7B (LR_L 5e-5, 66%:33%)": Released("lavit"),
    },
    columns=PAPER_COLUMNS,
    reference="lavit_table4",
    mode="numeric",
    preset="paper",
    data="data-root",
    describe="MMLU 5-shot (lm-eval, all 57 subjects) of the LLM after stage 2; the final setting is the released model.",
)

TABLE = register_table(TableSpec(key="lavit_table4", script="reproduce/table4.py", profiles={"mini": MINI, "paper": PAPER}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
