"""LaVIT Table 8: with vs without the token merger.

    python reproduce/table8.py [--profile mini] [--check] [--update-band]
    python reproduce/table8.py --profile paper --data-root DIR [--cluster slurm] [--device cuda]

Writes `results/lavit_table8.*`.

`mini` (default, CPU): the "w/ Token Merger" row is Table 1's mini chain itself (the same run directories); the
"w/o Token Merger" row retrains stage 1a with `tokenizer.use_merger=false` (no merger blocks: the selected patches
go straight to the quantizer and the unselected ones are discarded instead of merged into them) and its own stage 2
on that tokenizer (`model.tokenizer.use_merger=false`).

Columns, claims and `--check` as in `reproduce/table7.py`: the mini counterparts of Flickr / VQAv2 / OKVQA, the
paper's claim reported but not gated (`results/mini/lavit_table8.yaml`), the gate being "every cell measured" and
the regression band of a previous mini run (`results/mini/lavit_table8.band.json`, `--update-band`).

`paper`: the same rows with the `paper` presets on the data under --data-root (declared; needs a GPU cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.mini_chain import ablation_profiles
from reproduce.table import TableSpec, main, register_table

# The differences between the two rows are of the size of one seed's change (REPRODUCE.md): two stage-2 seeds per row.
SEEDS = (0, 1)  # a third seed per row would put .ci/run over its 90 minutes (REPRODUCE.md)

NO_MERGER_TOKENIZER = ("tokenizer.use_merger=false",)
NO_MERGER_UNIFIED = ("model.tokenizer.use_merger=false",)

TABLE_8 = register_table(TableSpec(
    key="lavit_table8",
    script="reproduce/table8.py",
    profiles=ablation_profiles(
        "lavit_table8",
        "w/o Token Merger",
        "w/ Token Merger",
        "stage 1a (and stage 2 on its tokenizer) with the token merger or with unselected patches discarded",
        tokenizer=NO_MERGER_TOKENIZER,
        seeds=SEEDS,
        unified=NO_MERGER_UNIFIED,
    ),
))

if __name__ == "__main__":
    sys.exit(main(TABLE_8))
