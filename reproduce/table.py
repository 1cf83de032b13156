"""The table machinery: a table script declares rows x columns (+ claims); this module does the rest.

A table script (`reproduce/table1.py`, ...) is a short declaration:

    TABLE = register_table(TableSpec(
        key="lavit_table1",
        profiles={
            "mini": Profile(rows={"Ours (mini)": Trained("lavit", chain=(...))}, columns=(...), reference="mini/lavit_table1"),
            "paper": Profile(rows={"Ours (LLaMA-7B)": Released("lavit")}, columns=(...), reference="lavit_table1"),
        },
    ))

and `main(TABLE)` does, for the chosen profile:

1. builds the profile's data (the mini world, or checks `--data-root`);
2. trains every stage of every `Trained` row's chain through the launcher (`python -m train STAGE ...` locally in
   a subprocess, or submitit job arrays on SLURM: all stages of one chain depth go in one array). A stage's run
   directory is `RUNS/<stage>-<hash>`, the hash covering the stage's resolved config with every upstream run
   replaced by *its* hash, so two rows that share a prefix of their chains share those runs, a finished run
   (`run.json` with `finished: true`) is reused and never redone, and a killed table run resumes where it stopped
   (the trainer resumes the unfinished stage from its last checkpoint);
3. evaluates the last stage of each chain (or the `--checkpoint` of a `Released` row) with the profile's tasks
   (`eval.evaluate.evaluate_tasks`, whose finished results are reused too) and computes `Computed` rows (baselines);
4. compares the measured frame with the reference (`reproduce/compare.py`: numeric verdicts for `paper`, the
   claim verdicts of `results/mini/<table>.yaml` for `mini`), writes `results/<table>.csv/.md` (no timestamps:
   a rerun with the same numbers leaves `git status` clean; provenance goes to `results/provenance/`, ignored by
   git), prints the final table and, with `--check`, exits 1 when a verdict fails;
5. for claim profiles, compares every cell with the regression band `results/mini/<table>.band.json` (a previous
   run's cells with tolerances, written by `--update-band`; not the paper's numbers). `--check` fails on a gating
   claim that fails, on anything not measured, and on a cell outside its band. A paper claim restated at mini
   scale carries `gate: false`: reported (holds / fails, with both numbers), never a CI failure by itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import pandas as pd

from harness.errors import InputError

CHECKOUT = Path(__file__).resolve().parent.parent
RESULTS_DIR = CHECKOUT / "results"
MINI_REFERENCE_DIR = RESULTS_DIR / "mini"


# ---------------------------------------------------------------------------------------------
# Declarations.


@dataclass(frozen=True)
class StageRun:
    """One training stage of a chain."""

    stage: str  # the launcher's stage name (`python -m train STAGE`)
    overrides: tuple[str, ...] = ()  # `--set key=value` on top of the profile's preset; "{data}" = the data root
    inputs: tuple[tuple[str, str], ...] = ()  # (config key, name of an earlier StageRun of the chain) pairs
    name: str = ""  # how later stages of the chain refer to it (default: the stage name)
    preset: str = ""  # the stage preset (default: the profile's `preset`)

    @property
    def key(self) -> str:
        return self.name or self.stage


@dataclass(frozen=True)
class Trained:
    """A row measured by training a chain of stages and evaluating its last stage.

    `seeds`: training seeds (`loop.seed`) of the chain's last stage. With more than one, the last stage is trained
    once per seed, the row's cells are the mean over the seeds and the per-seed values and their spread are
    reported beside the table: what a claim needs where the difference between two rows is small. Seed 0 is the
    stages' default and adds no override, so a row's seed-0 runs are the very runs of a row without seeds."""

    family: str
    chain: tuple[StageRun, ...]
    # Companion runs the evaluated model loads beside its last stage: (loader keyword, key of a StageRun of the
    # chain) pairs, e.g. (("pixel_decoder", "pixel_decoder"),) -> the family's loader gets pixel_decoder=<that run>.
    # The evaluation then goes to <last run>/eval+<companion run names>, apart from the plain evaluation.
    load_with: tuple[tuple[str, str], ...] = ()
    seeds: tuple[int, ...] = (0,)

    def with_seed(self, seed: int) -> "Trained":
        """The same row trained with `seed` in its last stage (one seed)."""
        if seed == 0:
            return Trained(self.family, self.chain, load_with=self.load_with)
        *head, last = self.chain
        last = StageRun(last.stage, last.overrides + (f"loop.seed={seed}",), last.inputs, last.name, last.preset)
        return Trained(self.family, (*head, last), load_with=self.load_with)


@dataclass(frozen=True)
class Released:
    """A row measured by evaluating a checkpoint the user brings (`--checkpoint DIR`)."""

    family: str


@dataclass(frozen=True)
class Computed:
    """A row computed without a model (a baseline, or a summary of other rows): fn(context) -> {column label: value}.
    `context.measured` holds the cells of the rows declared before it (e.g. the mean over seeds of earlier rows)."""

    fn: Callable[["Context"], dict[str, float]]
    note: str = ""


Row = Union[Trained, Released, Computed]


@dataclass(frozen=True)
class Column:
    label: str  # the column's label in the reference table
    task: str  # evaluation task (eval/tasks.py); "" = not an evaluation: `derive` reads the row's run instead
    metric: str  # metric name in the task's results
    scale: float = 1.0  # applied to the metric (e.g. 100 for a 0-1 accuracy printed as a percentage)
    # A value computed from the task's saved predictions instead of a registered metric: fn(ctx, task_dir) where
    # task_dir holds the runner's predictions.jsonl (e.g. "the caption names the right shape"). With task="":
    # fn(ctx, run_dir), run_dir = the last stage's run directory of a Trained row (the checkpoint of a Released
    # one), e.g. a number from the training run's metrics.jsonl.
    derive: Callable[["Context", Path], float] | None = None
    # A wall-time figure (ms per pair, ...): differs between machines and runs, so the committed result files show
    # it as "machine-dependent" and its cells (and the claims that read them) go to results/provenance/<key>.machine.csv.
    machine_dependent: bool = False


@dataclass
class Profile:
    rows: dict[str, Row]
    columns: tuple[Column, ...]
    reference: str  # reference key: "lavit_table1" (results/reference/) or "mini/lavit_table1" (results/mini/)
    mode: Literal["numeric", "claim"] = "claim"
    preset: str = "mini"  # the stage preset every StageRun starts from unless it names its own
    data: Literal["miniworld", "data-root"] = "miniworld"  # where evaluation data comes from
    # data="miniworld": fn(runs_dir) -> the built world the rows train and evaluate on; None = the plain mini world at
    # runs_dir/miniworld (harness.miniworld.build_miniworld). VILA Table 7's is the text world (harness.textworld).
    world: Callable[[Path], Any] | None = None
    eval_limit: int | None = None  # evaluate on the first N samples of each task (part of the result's identity)
    # Per task, a limit replacing eval_limit (lm_eval tasks: questions per subject), and a data root other than the
    # profile's (a path; relative = to the checkout), e.g. the real MMLU beside the mini world: {"mmlu": "../shared/data"}.
    task_limits: dict[str, int | None] = field(default_factory=dict)
    task_data: dict[str, str] = field(default_factory=dict)
    eval_batch_size: int = 16
    describe: str = ""  # one paragraph printed above the table
    figure: Callable[["Context", Path], Path] | None = None  # fn(ctx, png_path): a picture of the results (after measuring)
    # Claim-mode profiles: `--check` also gates on a regression band (results/mini/<table>.band.json, a previous run's
    # cells, written by --update-band). Per column: the band's width (default BandRule(): 10% of the value, at least 1).
    band_rules: dict[str, Any] = field(default_factory=dict)


@dataclass
class TableSpec:
    key: str  # "lavit_table1": names the reference and the result files
    script: str  # "reproduce/table1.py": what the status report lists as the command
    profiles: dict[str, Profile]
    default_profile: str = "mini"
    extra_references: tuple[str, ...] = ()  # further reference tables printed beside (e.g. the release's numbers)


@dataclass
class Context:
    """What the steps of one table run share."""

    spec: TableSpec
    profile_name: str
    profile: Profile
    runs_dir: Path
    results_dir: Path
    data_root: Path | None
    checkpoint: str | None
    cluster: str
    device: str
    world: Any = None  # the built mini world (harness.miniworld.MiniWorld), when the profile uses it
    # row label -> every evaluation output it read (OUT/<task>/..., one per seed), recorded in results/provenance/<key>.json
    evaluations: dict[str, list[Path]] = field(default_factory=dict)
    seed_cells: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # row label -> seed -> cells (rows with seeds)
    run_dirs: dict[str, dict[str, Path]] = field(default_factory=dict)  # Trained row label -> stage key -> run directory
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> cells, filled in row order
    slurm: dict[str, Any] = field(default_factory=dict)
    reuse_stale: bool = False  # reuse runs and evaluations made by other code (marked stale) instead of redoing them
    wait: bool = True  # wait for runs and evaluations owned by another process (False: fail naming the owner)
    stale: dict[str, str] = field(default_factory=dict)  # row label -> "stale: trained at <rev> (...)" (--reuse-stale)
    row: str = ""  # the row being measured (what `evaluate_for_row` marks stale)

    @property
    def eval_dirs(self) -> dict[str, Path]:
        """Row label -> its first (seed-0) evaluation output: what figures and derived rows read."""
        return {label: dirs[0] for label, dirs in self.evaluations.items()}


_TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    if spec.key in _TABLES and _TABLES[spec.key].script != spec.script:
        raise ValueError(f"table {spec.key!r} is registered twice ({_TABLES[spec.key].script}, {spec.script})")
    _TABLES[spec.key] = spec
    return spec


# The scripts that declare tables; importing one registers its table (no torch import at declaration time).
TABLE_MODULES = (
    "reproduce.table1",
    "reproduce.table2",
    "reproduce.table3",
    "reproduce.table4",
    "reproduce.table5",
    "reproduce.table6",
    "reproduce.table7",
    "reproduce.table8",
    "reproduce.table9",
    "reproduce.vila_table1",
    "reproduce.vila_table2",
    "reproduce.vila_table3",
    "reproduce.vila_table4",
    "reproduce.vila_table5",
    "reproduce.vila_table6",
    "reproduce.vila_table7",
    "reproduce.vila_table8",
    "reproduce.vila_table9",
    "reproduce.vila_table11",
)


def tables() -> dict[str, TableSpec]:
    import importlib

    for module in TABLE_MODULES:
        importlib.import_module(module)
    return dict(_TABLES)


# ---------------------------------------------------------------------------------------------
# Run directories: named by a hash of the resolved config and of everything upstream.


def _placeholders(ctx: Context) -> dict[str, str]:
    """{data}: the profile's data root; {release}: the committed mini release (model/mini_release/)."""
    from reproduce.release import RELEASE_DIR

    return {"{data}": str(ctx.data_root) if ctx.data_root else "", "{release}": str(RELEASE_DIR)}


def _fill(text: str, ctx: Context) -> str:
    for token, value in _placeholders(ctx).items():
        text = text.replace(token, value)
    return text


@dataclass
class PlannedStage:
    family: str
    run: StageRun
    overrides: list[str]  # filled, including upstream run directories
    config: Any  # resolved stage config
    digest: str  # hash of the config with upstream runs and local paths replaced by stable tokens
    directory: Path

    def summary(self) -> dict[str, Any] | None:
        """The run's run.json when it holds a finished run, else None."""
        try:
            summary = json.loads((self.directory / "run.json").read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) and summary.get("finished") else None

    @property
    def done(self) -> bool:
        return self.summary() is not None

    def stale_reason(self) -> str | None:
        """Why this finished run no longer is what today's code and upstream runs would train, or None.

        Stale: a source file it loaded has changed since (`harness.code_identity`), or an upstream run's run.json is
        not the one it trained from (that run was retrained)."""
        from harness.code_identity import changed_files, describe_change, made_at

        summary = self.summary()
        if summary is None:
            return None
        record = summary.get("code")
        if changed_files(record) != []:
            return f"trained at {made_at(record)}; {describe_change(record)}"
        for key, digest in (summary.get("inputs") or {}).items():
            upstream = next((o.split("=", 1)[1] for o in self.overrides if o.startswith(f"{key}=")), None)
            path = Path(upstream) / "run.json" if upstream else None
            if path is not None and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                return f"trained at {made_at(record)}; its input {key} ({path.parent.name}) was retrained since"
        return None


# Config keys added after runs were cached, with the value that keeps the old behaviour: at that value a key is left
# out of the hash input, so adding it does not rename (and retrain) every existing run; any other value is hashed.
ADDED_KEYS = {"model.pixel_decoder.latent_space": "vae"}


def _without_added_keys(tree: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in ADDED_KEYS.items():
        *heads, leaf = dotted.split(".")
        node = tree
        for head in heads:
            node = node.get(head) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == value:
            del node[leaf]
    return tree


def _stable_config(config: Any, replacements: dict[str, str]) -> str:
    """The config as canonical JSON with machine-specific paths replaced by stable tokens (hash input)."""
    from harness.config import to_dict

    text = json.dumps(_without_added_keys(to_dict(config)), sort_keys=True, default=str)
    for value, token in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        if value:
            text = text.replace(value, token)
    return text


# Config keys that change how a run reports, not what it computes: set to these fixed values before hashing, so
# they are left out of the run's identity.
_REPORTING_ONLY = {"loop.progress": False, "loop.log_every": 1, "loop.tensorboard": False, "loop.max_steps_this_run": 0,
                   "loop.keep_checkpoints": 2}  # fmt: skip


def plan_chain(row: Trained, ctx: Context) -> list[PlannedStage]:
    """Resolve every stage of `row`'s chain to its config, hash and run directory (nothing runs here)."""
    from harness.config import get_preset, resolve
    from train.config import preset_group
    from train.registry import family_stages, get_stage

    stages = family_stages(row.family)
    planned: dict[str, PlannedStage] = {}
    out = []
    for run in row.chain:
        spec = get_stage(run.stage)
        if spec not in stages:
            raise InputError(f"stage {run.stage!r} is not a stage of family {row.family!r}")
        spec.config_class()  # registers the presets
        overrides = [_fill(o, ctx) for o in run.overrides]
        from reproduce.release import RELEASE_DIR

        replacements = {str(RELEASE_DIR): "$RELEASE", **({str(ctx.data_root): _data_token(ctx)} if ctx.data_root else {})}
        for key, upstream in run.inputs:
            if upstream not in planned:
                raise InputError(f"stage {run.key!r}: input {key}={upstream!r} names no earlier stage of the chain")
            up = planned[upstream]
            overrides.append(f"{key}={up.directory}")
            replacements[str(up.directory)] = f"$RUN[{up.digest}]"
        config = resolve(get_preset(preset_group(run.stage), run.preset or ctx.profile.preset), overrides=overrides)
        identity = resolve(config, overrides=[f"{k}={v}" for k, v in _identity_defaults(config).items()])
        digest = hashlib.sha256(f"{row.family}/{run.stage}/{_stable_config(identity, replacements)}".encode()).hexdigest()[:12]
        stage = PlannedStage(row.family, run, overrides, config, digest, ctx.runs_dir / f"{run.stage}-{digest}")
        planned[run.key] = stage
        out.append(stage)
    return out


def _data_token(ctx: Context) -> str:
    """The data root's token in a run's identity: a mini world is named by its build hash, so a world built by other
    code (another corpus, other shards) trains new runs instead of reusing those of the old one."""
    if ctx.world is None:
        return "$DATA"
    return f"$DATA[{json.loads((Path(ctx.world.root) / 'DONE').read_text())['hash']}]"


def _identity_defaults(config: Any) -> dict[str, Any]:
    """The reporting-only keys this config has, at their fixed values (as --set strings)."""
    out = {}
    for key, value in _REPORTING_ONLY.items():
        head, _, leaf = key.partition(".")
        if hasattr(getattr(config, head, None), leaf):
            out[key] = json.dumps(value)
    return out


# ---------------------------------------------------------------------------------------------
# Training: the launcher, locally (one subprocess per stage) or on SLURM (one job array per chain depth).


def _log(message: str) -> None:
    print(f"[table] {message}", flush=True)


def _train_local(stage: PlannedStage, ctx: Context) -> None:
    from train.stages import LOCK_WAIT_ENV

    command = [sys.executable, "-m", "train", stage.run.stage, "--config", stage.run.preset or ctx.profile.preset,
               "--output-dir", str(stage.directory), "--set", "loop.progress=true"]
    for override in stage.overrides:
        command += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           LOCK_WAIT_ENV: "1" if ctx.wait else "0"}  # fmt: skip
    done = subprocess.run(command, env=env, cwd=CHECKOUT)
    if done.returncode == 2:  # the launcher refused its input and printed the one `error:` line above
        raise InputError(f"training stage {stage.run.key!r} ({stage.directory}) refused its input (see the error line above)")
    if done.returncode != 0:
        raise RuntimeError(f"training stage {stage.run.key!r} ({stage.directory}) failed with exit code {done.returncode}")


def _train_slurm(stages: list[PlannedStage], ctx: Context) -> None:
    from harness.config import resolve
    from train.slurm import SlurmOptions, submit_jobs
    from train.stages import prepare_run

    options = SlurmOptions(**ctx.slurm)
    jobs = [(s.run.stage, resolve(s.config, overrides=["loop.progress=false"]), s.directory) for s in stages]
    for stage, config, directory in jobs:  # bad input fails here, not in a job log (the upstream runs are finished)
        prepare_run(stage, config, directory, world_size=options.nodes * options.tasks(), memory=False)
    submitted = submit_jobs(jobs, options, ctx.runs_dir / "slurm", name=ctx.spec.key)
    for (job, out) in submitted:
        _log(f"submitted {job.job_id} -> {out}")
    for job, out in submitted:
        job.results()  # raises with the job's error if it failed
        _log(f"job {job.job_id} finished -> {out}")


def train_rows(ctx: Context) -> dict[tuple[str, int], list[PlannedStage]]:
    """Train (or reuse) every chain of the profile, once per seed of its row; returns (row label, seed) -> the
    planned chain (its last stage is the evaluated run). `ctx.run_dirs[label]`: the first seed's run directories."""
    chains = {
        (label, seed): plan_chain(row.with_seed(seed), ctx)
        for label, row in ctx.profile.rows.items() if isinstance(row, Trained) for seed in row.seeds
    }
    for (label, seed), chain in chains.items():
        if seed == ctx.profile.rows[label].seeds[0]:  # type: ignore[union-attr]
            ctx.run_dirs[label] = {stage.run.key: stage.directory for stage in chain}
        for keyword, key in ctx.profile.rows[label].load_with:  # type: ignore[union-attr]
            if key not in {stage.run.key for stage in chain}:
                raise InputError(f"row {label!r}: load_with {keyword}={key!r} names no stage of its chain")
    unique: dict[Path, PlannedStage] = {}
    depth: dict[Path, int] = {}
    for chain in chains.values():
        for i, stage in enumerate(chain):
            unique.setdefault(stage.directory, stage)
            depth[stage.directory] = max(depth.get(stage.directory, 0), i)
    finished = sum(s.done for s in unique.values())
    _log(f"{len(unique)} training runs ({finished} already finished, reused unless made by other code) in {ctx.runs_dir}")
    stale_runs: dict[Path, str] = {}
    for level in sorted(set(depth.values())):
        # A level's staleness is decided after the levels above it are (re)trained: a retrained upstream run makes
        # every run trained from it stale.
        batch = []
        for stage in (s for s in unique.values() if depth[s.directory] == level):
            reason = stage.stale_reason()
            if reason is not None and ctx.reuse_stale:
                stale_runs[stage.directory] = reason
                _log(f"reuse STALE run {stage.directory.name} (--reuse-stale): {reason}")
            elif reason is not None:
                _log(f"run {stage.directory.name} is stale ({reason}): moved to {_set_aside(stage.directory, ctx).parent.name}/, retraining")
            if not stage.done:
                batch.append(stage)
        if not batch:
            continue
        if ctx.cluster == "slurm":
            _train_slurm(batch, ctx)
            continue
        for stage in batch:
            start = time.perf_counter()
            _log(f"train {stage.run.stage} -> {stage.directory.name}")
            _train_local(stage, ctx)
            _log(f"train {stage.run.stage} done in {time.perf_counter() - start:.0f} s")
    missing = [s.directory for s in unique.values() if not s.done]
    if missing:
        raise RuntimeError(f"training runs did not finish: {[str(m) for m in missing]}")
    for (label, _seed), chain in chains.items():
        notes = [stale_runs[s.directory] for s in chain if s.directory in stale_runs]
        if notes and label not in ctx.stale:  # the first stale run of the chain is the cause of the others
            ctx.stale[label] = f"stale: {notes[0]}"
    return chains


def _set_aside(directory: Path, ctx: Context) -> Path:
    """Move a stale run out of the way (RUNS/.stale/<name>, replacing an older one there): kept for inspection,
    never reused."""
    import shutil

    aside = ctx.runs_dir / ".stale" / directory.name
    if aside.exists():
        shutil.rmtree(aside)
    aside.parent.mkdir(parents=True, exist_ok=True)
    directory.rename(aside)
    return aside


# ---------------------------------------------------------------------------------------------
# Evaluation and the measured frame.


def _tasks(profile: Profile) -> list[str]:
    return list(dict.fromkeys(c.task for c in profile.columns if c.task))


def check_data(tasks: list[str], data_root: Path) -> None:
    """Every file the tasks read exists under data_root (a one-line error naming the first missing one)."""
    from eval.evaluate import check_data as check
    from eval.evaluate import resolve_tasks

    check(resolve_tasks(tasks), data_root)


def task_data_root(task: str, ctx: Context) -> Path:
    """Where `task` reads its data: the profile's `task_data` entry (relative = to the checkout), else the data root."""
    where = ctx.profile.task_data.get(task)
    if not where:
        return Path(ctx.data_root)
    path = Path(where)
    return (path if path.is_absolute() else CHECKOUT / path).resolve()


def task_limit(task: str, profile: Profile) -> int | None:
    """How many samples of `task` the profile evaluates: its `task_limits` entry, else `eval_limit`."""
    return profile.task_limits[task] if task in profile.task_limits else profile.eval_limit


def evaluate_row(family: str, checkpoint: str | Path, output_dir: Path, ctx: Context, load_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every task of the profile on one checkpoint, loaded once; tasks are grouped by (data root, limit).
    `load_options` go to the family's loader (e.g. a companion run)."""
    from eval.evaluate import evaluate_tasks, prepare_tasks, resolve_tasks

    profile = ctx.profile
    groups: dict[tuple[Path, int | None], list[str]] = {}
    for task in _tasks(profile):
        limit = task_limit(task, profile)
        groups.setdefault((task_data_root(task, ctx), limit), []).append(task)
    if len(groups) == 1 and not load_options:  # the common case: evaluate_tasks loads the model itself (and on every rank)
        ((root, limit), tasks), = groups.items()
        return evaluate_tasks(tasks, family, str(checkpoint), str(root), str(output_dir), limit=limit,
                              batch_size=profile.eval_batch_size, device=ctx.device, reuse_stale=ctx.reuse_stale,
                              restart_changed=True, wait=ctx.wait)  # fmt: skip
    from model.families import get_family

    if load_options:  # evaluate_tasks checks the data before it loads a model; here the model is loaded first
        for (root, limit), tasks in groups.items():
            prepare_tasks(resolve_tasks(tasks), root, limit)
    loaded = get_family(family).load(str(checkpoint), device=ctx.device, **(load_options or {}))
    frames = [
        evaluate_tasks(tasks, family, str(checkpoint), str(root), str(output_dir), limit=limit,
                       batch_size=profile.eval_batch_size, device=ctx.device, loaded=loaded, reuse_stale=ctx.reuse_stale,
                       restart_changed=True, wait=ctx.wait)  # fmt: skip
        for (root, limit), tasks in groups.items()
    ]
    return pd.concat(frames, ignore_index=True)


def evaluate_for_row(ctx: Context, tasks: list, family: str, checkpoint: str | Path, output_dir: Path, **options: Any) -> pd.DataFrame:
    """`eval.evaluate.evaluate_tasks` for a `Computed` row that evaluates a model itself (a control, another
    generation seed): with the table's --reuse-stale / --no-wait, its stale rows marked on the row being measured."""
    from eval.evaluate import evaluate_tasks

    frame = evaluate_tasks(tasks, family, str(checkpoint), str(ctx.data_root), str(output_dir), device=ctx.device,
                           reuse_stale=ctx.reuse_stale, restart_changed=True, wait=ctx.wait, **options)  # fmt: skip
    _note_stale(frame, ctx.row, ctx)
    return frame


def _note_stale(results: pd.DataFrame, label: str, ctx: Context) -> None:
    """A row whose evaluation was reused from other code (--reuse-stale) is marked, like a stale run."""
    if "stale" in results and results["stale"].notna().any() and label not in ctx.stale:
        ctx.stale[label] = str(results["stale"].dropna().iloc[0])


def _cells(results: pd.DataFrame, profile: Profile, label: str, ctx: Context, eval_dir: Path, run_dir: Path) -> dict[str, float]:
    _note_stale(results, label, ctx)
    cells = {}
    for column in profile.columns:
        if not column.task:
            if column.derive is None:
                raise ValueError(f"column {column.label!r} has neither a task nor a derive function")
            cells[column.label] = float(column.derive(ctx, run_dir)) * column.scale
            continue
        if column.derive is not None:
            cells[column.label] = float(column.derive(ctx, eval_dir / column.task)) * column.scale
            continue
        hit = results[(results["task"] == column.task) & (results["metric"] == column.metric)]
        if hit.empty:
            known = sorted(set(zip(results["task"], results["metric"])))
            raise RuntimeError(f"row {label!r}: task {column.task!r} produced no metric {column.metric!r}; it produced {known}")
        cells[column.label] = float(hit["value"].iloc[0]) * column.scale
    return cells


def measure(ctx: Context) -> pd.DataFrame:
    """Every row's cells: train/evaluate/compute as declared. Returns a frame indexed by row label."""
    profile = ctx.profile
    trained = train_rows(ctx) if any(isinstance(r, Trained) for r in profile.rows.values()) else {}
    measured = ctx.measured = {}
    for label, row in profile.rows.items():
        if isinstance(row, Trained):
            per_seed = {}
            for seed in row.seeds:
                chain = trained[label, seed]
                run_dir = chain[-1].directory
                options = {keyword: next(s.directory for s in chain if s.run.key == key) for keyword, key in row.load_with}
                companions = "".join(f" + {d.name}" for d in options.values())
                _log(f"evaluate {label!r} ({run_dir.name}{companions}{f', seed {seed}' if len(row.seeds) > 1 else ''})")
                eval_dir = run_dir / ("eval" + "".join(f"+{d.name}" for d in options.values()))
                ctx.evaluations.setdefault(label, []).append(eval_dir)
                results = evaluate_row(row.family, run_dir, eval_dir, ctx, options)
                per_seed[seed] = _cells(results, profile, label, ctx, eval_dir, run_dir)
            measured[label] = {c: sum(cells[c] for cells in per_seed.values()) / len(per_seed) for c in per_seed[row.seeds[0]]}
            if len(row.seeds) > 1:
                ctx.seed_cells[label] = per_seed
        elif isinstance(row, Released):
            if not ctx.checkpoint:
                raise InputError(f"row {label!r} evaluates a released checkpoint: pass --checkpoint DIR")
            out = ctx.runs_dir / "released" / hashlib.sha256(str(Path(ctx.checkpoint).resolve()).encode()).hexdigest()[:12]
            _log(f"evaluate {label!r} from {ctx.checkpoint}")
            ctx.evaluations[label] = [out]
            measured[label] = _cells(evaluate_row(row.family, ctx.checkpoint, out, ctx), profile, label, ctx, out, Path(ctx.checkpoint))
        else:
            ctx.row = label
            measured[label] = row.fn(ctx)
    return pd.DataFrame.from_dict(measured, orient="index")


# ---------------------------------------------------------------------------------------------
# Comparison and output.


def reference_for(key: str):
    from reproduce.reference import get_reference

    if key.startswith("mini/"):
        return get_reference(key.split("/", 1)[1], MINI_REFERENCE_DIR)
    return get_reference(key)


def band_path(spec: TableSpec, profile_name: str) -> Path:
    """Where a profile's regression band lives: next to the mini claims, apart from the paper references."""
    suffix = "" if profile_name == "mini" else f".{profile_name}"
    return MINI_REFERENCE_DIR / f"{spec.key}{suffix}.band.json"


MACHINE_DEPENDENT = "machine-dependent"


def machine_columns(profile: Profile) -> tuple[str, ...]:
    return tuple(c.label for c in profile.columns if c.machine_dependent)


def split_machine_dependent(comparison, columns: tuple[str, ...], where: str):
    """(the comparison as committed, the machine-dependent part as a frame): cells of `columns`, and the claims
    that read them, keep their values only in the uncommitted file `where`."""
    import dataclasses

    from reproduce.compare import comparison_frame

    if not columns:
        return comparison, None
    ids = {c.id for c in comparison.reference.claims if any(set(check.columns) & set(columns) for check in c.checks)}
    numbers, claims = comparison.numbers.copy(), comparison.claims.copy()
    cell_mask = numbers["column"].isin(columns) & numbers["measured"].notna()
    claim_mask = claims["claim"].isin(ids) if len(claims) else pd.Series(dtype=bool)
    machine = comparison_frame(dataclasses.replace(comparison, numbers=numbers[cell_mask], claims=claims[claim_mask]))
    note = f"{MACHINE_DEPENDENT} (this machine's value: {where})"
    numbers.loc[cell_mask, ["measured", "delta"]] = float("nan")
    numbers.loc[cell_mask, "verdict"] = note
    if len(claims):
        claims.loc[claim_mask, "verdict"] = MACHINE_DEPENDENT
        claims.loc[claim_mask, "details"] = note
    return dataclasses.replace(comparison, numbers=numbers, claims=claims), machine


def write_outputs(ctx: Context, comparison, measured: pd.DataFrame, seconds: float, sections: str = "") -> tuple[Path, Path]:
    """results/<key>.csv/.md: what a rerun of the same code writes byte for byte on any machine (machine-dependent
    cells aside, see `split_machine_dependent`); provenance, wall time and the measured frame go to results/provenance/."""
    from reproduce.compare import comparison_frame, compare, to_markdown
    from reproduce.result_files import machine_cells_path, write_result_files

    spec, profile_name = ctx.spec, ctx.profile_name
    where = _relative(machine_cells_path(ctx.results_dir, spec.key))
    comparison, machine = split_machine_dependent(comparison, machine_columns(ctx.profile), where)
    frame = comparison_frame(comparison).assign(section=profile_name)
    if ctx.stale:  # --reuse-stale: every cell of an affected row says so (the column exists only then)
        frame["stale"] = frame["row"].map(ctx.stale)
    frames, md = [frame], [to_markdown(comparison)]
    if ctx.stale:
        md.append("\n## STALE rows (--reuse-stale: made by other code; rerun without it to redo them)\n\n"
                  + "\n".join(f"- {row}: {note}" for row, note in ctx.stale.items()) + "\n")
    if sections:
        md.append(sections)
    if profile_name != "paper" or comparison.reference.key != spec.key:
        paper = compare(reference_for(spec.key), pd.DataFrame(), mode="numeric", profile=profile_name)
        frames.append(comparison_frame(paper).assign(section="paper reference"))
        md.append("\n## The paper's table (reference only; not comparable with this profile's numbers)\n\n" + _reference_markdown(paper.reference))
    for extra in spec.extra_references:
        ref = reference_for(extra)
        md.append(f"\n## {ref.source}: {ref.title} (reference)\n\n" + _reference_markdown(ref))
    extra = {"profile": profile_name, "wall_time_s": round(seconds, 1), "measured": json.loads(measured.to_json(orient="index")),
             # where each row's predictions are (OUT/<task>/predictions.jsonl), for a look past the table's numbers
             "evaluations": {label: [_relative(d) for d in dirs] for label, dirs in ctx.evaluations.items()}}
    return write_result_files(ctx.results_dir, spec.key, pd.concat(frames, ignore_index=True), "\n".join(md), extra=extra, machine=machine)


def seed_frame(ctx: Context) -> pd.DataFrame:
    """Rows trained with several seeds: each cell per seed, its mean (the table's value) and spread (max - min).
    Machine-dependent columns are left out (they are not committed)."""
    records = []
    for label, per_seed in ctx.seed_cells.items():
        for column in next(iter(per_seed.values())):
            if column in machine_columns(ctx.profile):
                continue
            values = {seed: cells[column] for seed, cells in per_seed.items()}
            records.append({"row": label, "column": column, **{f"seed {s}": v for s, v in values.items()},
                            "mean": sum(values.values()) / len(values), "spread": max(values.values()) - min(values.values())})
    return pd.DataFrame.from_records(records)


def seed_spreads(ctx: Context) -> dict[tuple[str, str], float]:
    """(row, column) -> max - min over the row's seeds, for the rows trained with several seeds."""
    return {(label, column): max(v[column] for v in per_seed.values()) - min(v[column] for v in per_seed.values())
            for label, per_seed in ctx.seed_cells.items() if len(per_seed) > 1 for column in next(iter(per_seed.values()))}


def seed_markdown(ctx: Context) -> str:
    frame = seed_frame(ctx)
    if frame.empty:
        return ""
    return ("\n## Seeds (training seed of the last stage; the table shows the mean, spread = max - min)\n\n"
            + frame.round(4).to_markdown(index=False) + "\n")


def _reference_markdown(ref) -> str:
    wide = ref.cells.pivot_table(index="row", columns="column", values="printed", aggfunc="first", sort=False)
    wide = wide.reindex(index=[r for r in ref.rows if r in wide.index], columns=[c for c in ref.columns if c in wide.columns])
    return wide.fillna("").to_markdown() + "\n"


def print_table(comparison, measured: pd.DataFrame, profile: Profile) -> None:
    print()
    if profile.describe:
        print(profile.describe.strip() + "\n")
    print(measured.round(4).to_markdown(tablefmt="simple"))
    if len(comparison.claims):
        print()
        for c in comparison.claims.itertuples(index=False):
            gate = "" if c.gate else " (reported, not gated)"
            print(f"claim {c.claim}: {c.verdict.upper()}{gate}\n    {c.details}")
    print(f"\n{comparison.summary()}")


# ---------------------------------------------------------------------------------------------
# The command line every table script shares.


def build_parser(spec: TableSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python {spec.script}", description=f"Regenerate {spec.key}.")
    parser.add_argument("--profile", choices=sorted(spec.profiles), default=spec.default_profile)
    parser.add_argument("--checkpoint", help="paper profile: a released checkpoint directory (local path)")
    parser.add_argument("--data-root", help="paper profile: the benchmarks in their official layouts")
    parser.add_argument("--runs-dir", default=str(CHECKOUT / "runs"), help="training runs and evaluation caches (reused)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--cluster", choices=("local", "slurm"), default="local", help="where training stages run")
    parser.add_argument("--device", default="cpu", help="evaluation device (cpu, cuda)")
    parser.add_argument("--partition", help="slurm: partition")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="slurm: GPUs per node (0: CPU nodes)")
    parser.add_argument("--time", type=int, default=60, metavar="MIN", help="slurm: time limit per job")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a verdict fails: a gating claim or a cell not measured, a numeric mismatch, or (claim "
                             "profiles) a cell outside the regression band of results/mini/<table>.band.json")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse runs and evaluations made by other code (a changed source file, a retrained upstream run) "
                             "instead of redoing them; their rows are marked 'stale: trained at <rev>' in the outputs")
    parser.add_argument("--no-wait", action="store_true",
                        help="fail at once, naming the owner, when another process is training a run or evaluating a task "
                             "this table needs (default: wait for it, then reuse what it made)")
    parser.add_argument("--update-band", action="store_true",
                        help="claim profiles: (re)write results/mini/<table>.band.json from this run's cells (a regression band, "
                             "not paper numbers; commit it)")
    return parser


def main(spec: TableSpec, argv: list[str] | None = None) -> int:
    """A table script's entry point: bad input is one `error:` line and exit code 2 (`harness.errors.run_cli`:
    `--debug` or VLM_DEBUG=1 shows the traceback)."""
    from harness.errors import run_cli

    return run_cli(lambda args: _main(spec, args), argv)


def _main(spec: TableSpec, argv: list[str] | None) -> int:
    args = build_parser(spec).parse_args(argv)
    start = time.perf_counter()
    profile = spec.profiles[args.profile]
    if args.update_band and profile.mode != "claim":
        raise InputError(f"--update-band: profile {args.profile!r} is checked against the paper's numbers, it has no regression band")
    runs_dir = Path(args.runs_dir).resolve()
    ctx = Context(spec, args.profile, profile, runs_dir, Path(args.results_dir), None, args.checkpoint, args.cluster, args.device,
                  slurm={"gpus_per_node": args.gpus_per_node, "partition": args.partition, "timeout_min": args.time},
                  reuse_stale=args.reuse_stale, wait=not args.no_wait)
    if profile.data == "miniworld":
        from harness.miniworld import build_miniworld

        ctx.world = profile.world(runs_dir) if profile.world else build_miniworld(runs_dir / "miniworld")
        ctx.data_root = Path(ctx.world.root)
        for task in profile.task_data:  # the tasks that read elsewhere: checked before anything is trained
            check_data([task], task_data_root(task, ctx))
    else:
        if not args.data_root:
            raise InputError(f"profile {args.profile!r} evaluates on the benchmarks: pass --data-root DIR")
        ctx.data_root = Path(args.data_root).resolve()
        for task in _tasks(profile):  # before any model is built
            check_data([task], task_data_root(task, ctx))
    if any(isinstance(r, Released) for r in profile.rows.values()) and not args.checkpoint:
        raise InputError(f"profile {args.profile!r} evaluates a released checkpoint: pass --checkpoint DIR")
    band_file = band_path(spec, args.profile)
    if args.check and profile.mode == "claim" and not args.update_band:
        from reproduce.compare import read_band

        read_band(band_file)  # a missing band fails before anything is trained
    measured = measure(ctx)
    from reproduce.compare import compare, regression_band

    comparison = compare(reference_for(profile.reference), measured, mode=profile.mode, profile=args.profile, spreads=seed_spreads(ctx))
    band = None
    if profile.mode == "claim":  # machine-dependent cells have no band: they differ between machines by design
        band = regression_band(band_file, measured, spec.key, args.profile, profile.band_rules, update=args.update_band,
                               shown_as=_relative(band_file), leave_out=machine_columns(profile))
    seconds = time.perf_counter() - start
    seeds_section = seed_markdown(ctx)
    csv_path, md_path = write_outputs(ctx, comparison, measured, seconds, seeds_section + (band.section if band else ""))
    print_table(comparison, measured, profile)
    if seeds_section:
        print(seeds_section)
    if band is not None and band.check is not None:
        print(f"regression band {_relative(band_file)}: {band.inside}/{len(band.check)} cells inside")
    for row, note in ctx.stale.items():
        print(f"STALE row {row!r}: {note}")
    print(f"wrote {csv_path} and {md_path} ({seconds:.0f} s)")
    if profile.figure is not None:
        print(f"wrote {profile.figure(ctx, ctx.results_dir / f'{spec.key}.png')}")
    failed = False
    if args.check and not comparison.passed:
        print(f"CHECK FAILED:\n{comparison.failures.to_string(index=False)}", file=sys.stderr)
        failed = True
    if args.check and band is not None and band.outside is not None:
        print(f"CHECK FAILED: cells outside the regression band {_relative(band_file)} (a previous mini run, not the paper):\n"
              f"{band.outside.to_string(index=False)}", file=sys.stderr)
        failed = True
    if args.check and ctx.stale:
        print(f"CHECK FAILED: {len(ctx.stale)} rows were made by other code (--reuse-stale); rerun without it", file=sys.stderr)
        failed = True
    return 1 if failed else 0


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(CHECKOUT))
    except ValueError:
        return str(path)
