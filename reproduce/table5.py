"""LaVIT Table 5: the RedPajama subset proportions of stage 2's text-only stream.

    python reproduce/table5.py [--samples 200000] [--check]

Nothing is trained. Two checks:

1. **stated**: the `paper` preset of stage 2 (`python -m train unified --config paper`) weighs its text sources
   exactly as Table 5 prints them (C4 80%, the five others 4% each; numeric comparison, tolerance 0);
2. **drawn**: stage 2's own text sampler (`text_mixture` of the stage, the `Mixture` the trainer iterates) with that
   preset's weights and seed draws `--samples` documents from tiny synthetic JSONL sources, one per subset; the
   drawn shares are compared with the stated ones: the largest absolute deviation in percentage points and a
   chi-square goodness-of-fit p-value. Claim: every subset within 0.5 percentage points.

`--check` exits 1 when a stated proportion differs from Table 5 or a drawn share is off by more than 0.5 points.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's packages and write into its results/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from reproduce.compare import RESULTS_DIR, compare, write_comparison
from reproduce.table import TableSpec, register_table

STAGE = "unified"
# Table 5's row labels -> the stage's source names.
SUBSETS = {"C4": "c4", "Github": "github", "Wikipedia": "wikipedia", "Books": "books", "ArXiv": "arxiv", "StackExchange": "stackexchange"}
MAX_DEVIATION_PP = 0.5  # the claim: every drawn share within half a percentage point of the stated one

# Nothing is trained or evaluated (own main below, no profiles).
TABLE = register_table(TableSpec(key="lavit_table5", script="reproduce/table5.py", profiles={}, default_profile="paper"))


def paper_config():
    from harness.config import get_preset
    from train.registry import get_stage
    from train.config import preset_group

    get_stage(STAGE).config_class()  # registers the stage's presets
    return get_preset(preset_group(STAGE), "paper")


def stated_table(cfg) -> pd.DataFrame:
    """The preset's text weights as percentages of the text stream, one row per Table 5 subset."""
    weights = cfg.data.text_weights
    unknown = sorted(set(weights) - set(SUBSETS.values()))
    if unknown:
        raise ValueError(f"the paper preset's data.text_weights names sources that are not Table 5 subsets: {unknown}")
    total = sum(w for w in weights.values() if w > 0)
    return pd.DataFrame({"Sampling prop": {row: 100.0 * weights.get(name, 0.0) / total for row, name in SUBSETS.items()}})


def draw(cfg, samples: int, directory: Path) -> dict[str, int]:
    """Draw `samples` documents from the stage's text mixture over one tiny JSONL file per source; counts per source."""
    from model.families import resolve
    from train.registry import get_stage

    # The stage's own text stream builder, next to its trainer task (what build_data iterates).
    text_mixture = resolve(get_stage(STAGE).task.split(":")[0] + ":text_mixture")
    sources = {}
    for name in SUBSETS.values():
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps({cfg.data.text_key: f"{name} document {i}"}) + "\n" for i in range(3)))
        sources[name] = [str(path)]
    mixture = text_mixture(cfg.data, sources, cfg.loop.seed)
    counts = {name: 0 for name in SUBSETS.values()}
    for _ in range(samples):
        name, text = next(mixture)
        if not text.startswith(name):  # the document came from the source the mixture says it picked
            raise RuntimeError(f"mixture picked {name!r} but returned {text!r}")
        counts[name] += 1
    return counts


def drawn_frame(stated: pd.DataFrame, counts: dict[str, int]) -> tuple[pd.DataFrame, dict[str, float]]:
    from scipy.stats import chisquare

    n = sum(counts.values())
    frame = pd.DataFrame({
        "stated %": stated["Sampling prop"],
        "drawn": pd.Series({row: counts[name] for row, name in SUBSETS.items()}),
    })
    frame["drawn %"] = 100.0 * frame["drawn"] / n
    frame["deviation (pp)"] = frame["drawn %"] - frame["stated %"]
    expected = frame["stated %"] / 100.0 * n
    test = chisquare(frame["drawn"].to_numpy(dtype=float), expected.to_numpy())
    stats = {"samples": n, "max_abs_deviation_pp": float(frame["deviation (pp)"].abs().max()), "chi2": float(test.statistic),
             "dof": len(frame) - 1, "p_value": float(test.pvalue)}
    return frame, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="documents drawn from the text mixture")
    parser.add_argument("--check", action="store_true", help="exit 1 when a stated proportion differs or a drawn share is off by > 0.5 pp")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.samples < 1:
        from harness.errors import InputError

        raise InputError(f"--samples must be positive, got {args.samples}")
    cfg = paper_config()
    stated = stated_table(cfg)
    result = compare("lavit_table5", stated, mode="numeric", profile="paper")
    with tempfile.TemporaryDirectory() as tmp:
        counts = draw(cfg, args.samples, Path(tmp))
    drawn, stats = drawn_frame(stated, counts)
    holds = stats["max_abs_deviation_pp"] <= MAX_DEVIATION_PP
    verdict = "holds" if holds else "fails"
    claim = (f"every subset within {MAX_DEVIATION_PP} percentage points of its stated share: {verdict} (largest deviation "
             f"{stats['max_abs_deviation_pp']:.3f} pp over {stats['samples']:,} draws; chi-square {stats['chi2']:.2f}, "
             f"{stats['dof']} dof, p = {stats['p_value']:.3f})")
    section = (f"\n## Drawn by stage 2's text sampler (`{STAGE}` stage, `paper` preset, seed {cfg.loop.seed})\n\n"
               f"{drawn.round(4).to_markdown()}\n\nClaim: {claim}.\n")
    drawn_name = "lavit_table5_drawn.csv"
    csv_path, md_path = write_comparison(result, args.results_dir, extra_markdown=section,
                                         side_files={drawn_name: drawn.rename_axis("subset").assign(**stats).to_csv()})
    drawn_path = Path(args.results_dir) / drawn_name
    shown = result.numbers[result.numbers["target"]][["row", "column", "printed", "measured", "verdict"]]
    print(shown.to_markdown(index=False, tablefmt="simple"))
    print()
    print(drawn.round(4).to_markdown(tablefmt="simple"))
    print(f"\nclaim drawn_shares_within_half_a_point: {verdict.upper()}\n    {claim}")
    print(f"\n{result.summary()}\nwrote {csv_path}, {md_path} and {drawn_path}")
    failed = False
    if args.check and not result.passed:
        print(f"CHECK FAILED:\n{result.failures.to_string(index=False)}", file=sys.stderr)
        failed = True
    if args.check and not holds:
        print(f"CHECK FAILED: {claim}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    from harness.errors import run_cli

    sys.exit(run_cli(main))
