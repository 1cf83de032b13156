"""The README's VILA mini chain runs as written (issue 18 item 1): every `python -m train` line of the README's VILA
block, with `$W` a small mini world and the run directories under a temporary folder, each stage cut to one or two
steps; then its `python -m eval` line on two samples. The commands are read from README.md, so a key the launcher
does not know (`data.miniworld` on `vila_llm_pretrain` was one) fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from harness.errors import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parent.parent / "README.md"
# One step per stage (the rest of each line is the README's).
SHORT = ("loop.steps=1", "loop.checkpoint_every=1")
SMALL_BATCH = ("loop.global_batch_size=2", "loop.micro_batch_size=2")


def readme_vila_commands() -> list[list[str]]:
    """The shell lines of the README's VILA block (the fenced block after "## VILA"), continuation lines joined."""
    text = README.read_text()
    section = text[text.index("## VILA"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    block = block.replace("\\\n", " ")
    lines = [re.sub(r"#.*$", "", line).strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("python ")]


def test_the_readme_block_is_found():
    commands = readme_vila_commands()
    stages = [c[3] for c in commands if c[:3] == ["python", "-m", "train"]]
    assert stages == ["vila_llm_pretrain", "vila_vision_pretrain", "vila_projector", "vila_pretrain", "vila_sft"]
    assert [c[:3] for c in commands][-1] == ["python", "-m", "eval"]


def _substitute(argv: list[str], world: Path, runs: Path) -> list[str]:
    return [a.replace("$W", str(world)).replace("runs/", f"{runs}/").replace("out/", f"{runs}/out/") for a in argv]


def test_the_readme_vila_chain_runs_as_written(tmp_path):
    from harness.miniworld import build_miniworld
    from train.__main__ import main as train_main

    world = build_miniworld(tmp_path / "world", seed=0, train_images=40, test_images=10)
    runs = tmp_path / "runs"
    for argv in readme_vila_commands():
        argv = _substitute(argv, Path(world.root), runs)
        if argv[:3] == ["python", "-m", "train"]:
            extra = [*SHORT, *(SMALL_BATCH if argv[3] != "vila_vision_pretrain" else ())]
            args = argv[3:] + [x for o in extra for x in ("--set", o)]
            assert run_cli(train_main, args) == 0, " ".join(argv)
            continue
        from eval.__main__ import main as eval_main

        args = argv[3:]
        args[args.index("--limit") + 1] = "2"
        assert run_cli(eval_main, args) == 0, " ".join(argv)
        out = Path(args[args.index("--output-dir") + 1])
        for task in args[0].split(","):
            assert (out / task).is_dir(), task


def test_the_readme_chain_trains_each_stage_as_long_as_the_tables_chain():
    """The README's step counts are the tables' (`reproduce/vila_mini_chain.py`: the stand-ins' and SFT's, each set
    on competence): a change to one without the other would make the README's model not the tables' model."""
    from reproduce.vila_mini_chain import VILA_CHAIN

    def steps(overrides) -> str | None:
        return next((o.split("=", 1)[1] for o in overrides if o.startswith("loop.steps=")), None)

    readme = {c[3]: steps(c[i + 1] for i, a in enumerate(c) if a == "--set")
              for c in readme_vila_commands() if c[:3] == ["python", "-m", "train"]}  # fmt: skip
    tables = {run.stage: steps(run.overrides) for run in VILA_CHAIN}
    assert readme == tables
    assert tables["vila_sft"] is not None  # the chain overrides SFT's preset (the module docstring says why)
