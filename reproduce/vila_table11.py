"""VILA Table 11 (Appendix C): a second LLM backbone, Vicuna-1.5-7B beside Llama-2-7B.

    python reproduce/vila_table11.py [--profile mini] [--check] [--update-band]

The paper repeats two studies with Vicuna-1.5-7B: Table 1's recipe study (the LLM frozen or trained in pre-training,
trained in SFT; average 0-shot and 4-shot over OKVQA, TextVQA, COCO, Flickr) and Table 5's setting (VQAv2, GQA,
VisWiz), where the two backbones score alike.

`mini` (CPU): the mini VILA chain (`reproduce/vila_mini_chain.py`) on each of two LLM stand-ins: the one every mini
VILA table uses (the counterpart of Llama-2) and `VICUNA_LLM` (the same recipe with the corpus blend shifted to the
question-answer source, the counterpart of Vicuna's conversation tuning). Per backbone two rows: PreT ✗ SFT ✓
(`train_llm=false` in stage 1) and PreT ✓ SFT ✓ (the chain itself). The projector is the chain's (mlp2x_gelu), for
both backbones. Rows share runs: the Llama-2 PreT ✓ row is the chain of Tables 1, 5, 6 and 9 (evaluated there with
the same limits); its PreT ✗ row adds two runs; the Vicuna rows add six (the stand-in, stage 0, two stage-1 runs, two
stage-2 runs). Columns: Table 1's mini 0/4-shot columns and their Avg (the same tasks and limits), and Table 5's mini
counterparts of VQAv2 and GQA (mini VQA and its colour/shape questions; VisWiz has no mini counterpart). The paper's
claims, restated for the mini rows, are reported, not gated (results/mini/vila_table11.yaml).

The paper profile is not declared: its left half is VILA Table 1's paper profile with `llm_path` set to a Vicuna
folder, and its right half VILA Table 5's paper profile on a released VILA checkpoint trained from Vicuna.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.table import Profile, TableSpec, Trained, main, register_table
from reproduce.vila_mini_chain import VICUNA_LLM, VILA_LLM, vila_chain
from reproduce.vila_table1 import MINI as TABLE1
from reproduce.vila_table1 import _columns
from reproduce.vila_table5 import MINI as TABLE5
from reproduce.vila_table5 import VQA_COLUMNS

FROZEN = ("train_llm=false",)
BACKBONES = (("Llama-2", VILA_LLM), ("Vicuna", VICUNA_LLM))
SETTINGS = (("PreT ✗, SFT ✓", FROZEN), ("PreT ✓, SFT ✓", ()))

FEW_SHOT = _columns((("VQA", "mini_vqa", "vqa_accuracy"), ("Caption", "mini_caption", "CIDEr")))
TABLE5_COLUMNS = tuple(c for c in VQA_COLUMNS if not c.label.startswith("POPE"))  # VQAv2, GQA: the paper's right half
COLUMNS = FEW_SHOT + TABLE5_COLUMNS

MINI = Profile(
    rows={f"{name} (mini): {setting}": Trained("vila", vila_chain(pretrain=switch, llm=llm))
          for name, llm in BACKBONES for setting, switch in SETTINGS},  # fmt: skip
    columns=COLUMNS,
    reference="mini/vila_table11",
    mode="claim",
    data="miniworld",
    eval_limit=TABLE1.eval_limit,  # Table 1's and Table 5's limits: the Llama-2 PreT ✓ row is evaluated there
    task_limits={**TABLE1.task_limits, **TABLE5.task_limits},
    band_rules={**{c.label: TABLE1.band_rules[c.label] for c in FEW_SHOT},
                **{c.label: TABLE5.band_rules[c.label] for c in TABLE5_COLUMNS}},  # fmt: skip
    describe="The mini VILA chain on two LLM stand-ins (Llama-2's and Vicuna's counterparts), the LLM frozen or "
             "trained in pre-training; Table 1's 0/4-shot columns and Table 5's VQAv2 / GQA counterparts. Not "
             "comparable with the paper's numbers.",
)

TABLE = register_table(TableSpec(key="vila_table11", script="reproduce/vila_table11.py", profiles={"mini": MINI}))

if __name__ == "__main__":
    sys.exit(main(TABLE))
