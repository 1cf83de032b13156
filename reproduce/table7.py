"""LaVIT Table 7: the visual input of [image; text] sequences (7a) and unlocking the LLM in stage 2 (7b).

    python reproduce/table7.py [--profile mini] [--check] [--update-band]
    python reproduce/table7.py --profile paper --data-root DIR [--cluster slurm] [--device cuda]

Writes `results/lavit_table7a.*` and `results/lavit_table7b.*`.

`mini` (default, CPU): every row is Table 1's mini chain (`reproduce/mini_chain.py`) with at most one stage-2
switch; the shared rows (Continuous, Unlock LLM) are Table 1's model itself (the same run directories), and each
other row is one more stage-2 run:

* 7a Quantized: `model.ablation.understanding_input=quantized` (the LLM reads its own embeddings of the discrete
  codes instead of the token merger's continuous outputs);
* 7b Frozen LLM: `model.ablation.freeze_llm=true` (only the understanding token merger and its projection train).

Columns, claims and `--check` as in `reproduce/table3.py`: the mini counterparts of Flickr / VQAv2 / OKVQA, the
paper's claims reported but not gated, the gate being "every cell measured" and the regression band of a previous
mini run (`results/mini/<table>.band.json`, `--update-band`).

`paper`: the same rows with the `paper` presets on the data under --data-root (declared; needs a GPU cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.mini_chain import ABLATION_BAND, ABLATION_COLUMNS, MINI_CHAIN, PAPER_ABLATION_COLUMNS, mini_chain, paper_chain
from reproduce.table import Profile, TableSpec, Trained, main, register_table

QUANTIZED = ("model.ablation.understanding_input=quantized",)
FROZEN = ("model.ablation.freeze_llm=true",)


def _profiles(key: str, switched: str, shared: str, switch: tuple[str, ...], describe: str) -> dict[str, Profile]:
    mini = Profile(
        rows={switched: Trained("lavit", mini_chain(unified=switch)), shared: Trained("lavit", MINI_CHAIN)},
        columns=ABLATION_COLUMNS,
        reference=f"mini/{key}",
        eval_limit=1000,
        band_rules=ABLATION_BAND,
        describe=f"Mini world, zero-shot on held-out test images; {describe} (the rest shared with Table 1).",
    )
    paper = Profile(
        rows={switched: Trained("lavit", paper_chain(unified=switch)), shared: Trained("lavit", paper_chain())},
        columns=PAPER_ABLATION_COLUMNS,
        reference=key,
        mode="numeric",
        preset="paper",
        data="data-root",
        describe="The paper's ablation setting (Appendix B.2), zero-shot.",
    )
    return {"mini": mini, "paper": paper}


TABLE_7A = register_table(TableSpec(
    key="lavit_table7a",
    script="reproduce/table7.py",
    profiles=_profiles("lavit_table7a", "Quantized", "Continuous", QUANTIZED, "stage 2 with quantized or continuous visual input for [image; text]"),
))
TABLE_7B = register_table(TableSpec(
    key="lavit_table7b",
    script="reproduce/table7.py",
    profiles=_profiles("lavit_table7b", "Frozen LLM", "Unlock LLM", FROZEN, "stage 2 with the LLM frozen or trained"),
))


def run(argv: list[str] | None = None) -> int:
    """Both halves, in order, on the same command line; the worse exit code. Bad input (exit 2) stops at the first
    half: the second would only repeat its error line."""
    first = main(TABLE_7A, argv)
    return first if first == 2 else max(first, main(TABLE_7B, argv))


if __name__ == "__main__":
    sys.exit(run())
