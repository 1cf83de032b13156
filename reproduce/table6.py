"""LaVIT Table 6: causal vs bi-directional self-attention in the token merger.

    python reproduce/table6.py [--profile mini] [--check] [--update-band]
    python reproduce/table6.py --profile paper --data-root DIR [--cluster slurm] [--device cuda]

Writes `results/lavit_table6.*`.

`mini` (default, CPU): the Causal row is Table 1's mini chain itself (the same run directories); the
Bi-directional row retrains stage 1a with `tokenizer.merger_attention=bidirectional` (every kept token attends to
every kept token, instead of only the earlier ones) and its own stage 2 on that tokenizer (the merger also produces
stage 2's understanding input, so stage 2 carries the same switch: `model.tokenizer.merger_attention`).

Columns, claims and `--check` as in `reproduce/table7.py`: the mini counterparts of Flickr / VQAv2 / OKVQA, the
paper's claim reported but not gated (`results/mini/lavit_table6.yaml`), the gate being "every cell measured" and
the regression band of a previous mini run (`results/mini/lavit_table6.band.json`, `--update-band`).

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

BIDIRECTIONAL_TOKENIZER = ("tokenizer.merger_attention=bidirectional",)
BIDIRECTIONAL_UNIFIED = ("model.tokenizer.merger_attention=bidirectional",)

TABLE_6 = register_table(TableSpec(
    key="lavit_table6",
    script="reproduce/table6.py",
    profiles=ablation_profiles(
        "lavit_table6",
        "Bi-directional Attention",
        "Causal Attention",
        "stage 1a (and stage 2 on its tokenizer) with causal or bi-directional self-attention in the token merger",
        tokenizer=BIDIRECTIONAL_TOKENIZER,
        seeds=SEEDS,
        unified=BIDIRECTIONAL_UNIFIED,
    ),
))

if __name__ == "__main__":
    sys.exit(main(TABLE_6))
