"""One error convention for every command: bad input -> one line `error: ...` naming the key, file or value, exit
code 2, no traceback (unless --debug or VLM_DEBUG=1 asks for it).

The commands' `main`s run in this process under `harness.errors.run_cli` (what each `python -m` entry point calls);
two real `python -m train` processes check the entry point itself and --debug.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _bad_input(tmp: Path) -> list[tuple[str, list[str], str]]:
    (tmp / "a_file").write_text("x")
    (tmp / "no_markers.md").write_text("hello\n")
    (tmp / "measured.csv").write_text("row,x\na,1\n")
    (tmp / "empty.safetensors").write_bytes(b"")
    # A run directory whose only checkpoint does not verify (its manifest names a file that is not there).
    (tmp / "empty_run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp / "empty_run" / "checkpoints" / "step_00000002" / "manifest.json").write_text('{"step": 2, "files": {"model.safetensors": {"size": 4}}}')
    missing = tmp / "missing"
    return [
        # command, argv, what the line must name
        ("train", ["tokenizer", "--config", "mini", "--output-dir", str(tmp / "a_file")], f"--output-dir {tmp / 'a_file'}"),
        ("train", ["tokenizer", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", "optim.lrr=1"], "'optim.lrr'"),
        ("train", ["tokenizer", "--config", "huge", "--output-dir", str(tmp / "r")], "unknown preset 'huge'"),
        ("train", ["unified", "--config", "mini", "--output-dir", str(tmp / "r")], "tokenizer_checkpoint is not set"),
        ("train", ["pixel_decoder", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", f"tokenizer_checkpoint={missing}"], f"tokenizer_checkpoint={missing}"),
        ("train", ["unified", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", f"tokenizer_checkpoint={tmp / 'empty.safetensors'}"],
         f"tokenizer_checkpoint: {tmp / 'empty.safetensors'} is not a readable .safetensors file"),
        ("train", ["tokenizer", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", "synthetic.enabled=false"], "data.shards is empty"),
        ("train", ["tokenizer", "--config", "mini", "--output-dir", str(tmp / "r"), "--sweep", "optim.lr=1,2"], "--sweep needs --cluster slurm"),
        ("eval.caption", ["--annotations", str(missing), "--predictions", str(missing)], str(missing)),
        ("eval.vqa", ["--predictions", str(missing), "--questions", str(missing), "--annotations", str(missing)], str(missing)),
        ("eval.fid", ["--real", str(missing), "--fake", str(missing)], str(missing)),
        ("eval.coco30k", ["sample", "--captions", str(missing), "--out", str(tmp / "o.json")], str(missing)),
        ("eval.mmlu", ["--model", "lavit", "--checkpoint", str(missing)], str(missing)),
        ("eval.inception", ["--export-torch-fidelity", str(tmp / "o.pt"), "--weights", str(missing)], str(missing)),
        ("reproduce.compare", ["lavit_table9", "--measured", str(missing)], str(missing)),
        ("reproduce.compare", ["lavit_tableXX", "--measured", str(tmp / "measured.csv"), "--results-dir", str(tmp)], "'lavit_tableXX'"),
        ("reproduce.table9", ["--results-dir", str(tmp / "a_file")], str(tmp / "a_file")),
        ("reproduce.report", ["--update", str(tmp / "no_markers.md"), "--results-dir", str(tmp / "res")], "status markers not found"),
        ("model.summary", ["--config", "lavit-tiny", "--set", "llm.nope=1"], "'llm.nope'"),
        ("eval.__main__", ["mini_vqa", "--model", "lavit", "--checkpoint", str(missing), "--data-root", str(tmp), "--output-dir", str(tmp / "o")],
         f"--checkpoint {missing} does not exist"),
        ("eval.__main__", ["vqa", "--model", "lavit", "--checkpoint", str(tmp), "--data-root", str(tmp), "--output-dir", str(tmp / "o")],
         "unknown evaluation task 'vqa'"),
        ("eval.__main__", ["mini_vqa", "--model", "nope", "--checkpoint", str(tmp), "--data-root", str(tmp), "--output-dir", str(tmp / "o")],
         "unknown model family 'nope'"),
        ("harness.miniworld", ["--root", str(tmp / "a_file")], f"mini world root {tmp / 'a_file'} exists and is not a directory"),
        ("train", ["encoder_pretrain", "--config", "paper", "--output-dir", str(tmp / "r")], "released_stand_in=false"),
        ("train", ["llm_pretrain", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", "synthetic.enabled=false"],
         "data.text_sources.c4 is empty"),
        ("train", ["encoder_pretrain", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", "loop.micro_batch_size=1",
                   "--set", "loop.global_batch_size=1"], "loop.micro_batch_size=1"),
        ("train", ["unified", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", "tokenizer_checkpoint=random-init",
                   "--set", f"llm_path={missing}"], f"llm_path={missing}"),
        ("train", ["tokenizer", "--config", "mini", "--output-dir", str(tmp / "r"), "--set", f"encoder_path={tmp / 'empty_run'}"],
         f"encoder_path={tmp / 'empty_run'}: "),
    ]


def test_every_command_reports_bad_input_as_one_error_line_and_exit_2(tmp_path, capsys):
    for command, argv, named in _bad_input(tmp_path):
        module = importlib.import_module("train.__main__" if command == "train" else command)
        code = run_cli(module.main, argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (command, argv, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, err)
        assert named in lines[0], (command, named, lines[0])
    assert not (tmp_path / "r").exists()  # no refused run left a directory behind


def test_a_failed_slurm_submission_is_one_error_line(tmp_path, capsys, monkeypatch):
    import train.slurm
    from train.__main__ import main

    def refuse(*args, **kwargs):
        raise RuntimeError("sbatch: error: invalid partition specified: gpu-huge\nsbatch: error: Batch job submission failed")

    monkeypatch.setattr(train.slurm, "make_executor", refuse)
    code = run_cli(main, ["tokenizer", "--config", "mini", "--output-dir", str(tmp_path / "r"), "--cluster", "slurm", "--partition", "gpu-huge"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: SLURM submission failed (RuntimeError): sbatch: error: invalid partition specified: gpu-huge")


def test_table_scripts_report_bad_input_as_one_error_line(tmp_path, capsys):
    from reproduce import table1
    from reproduce.table import main

    argv = ["--profile", "paper", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert main(table1.TABLE, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: profile 'paper' evaluates on the benchmarks: pass --data-root DIR"]
    assert not (tmp_path / "res").exists()


def test_the_entry_point_prints_no_traceback_unless_debug_asks(tmp_path):
    command = [sys.executable, "-m", "train", "unified", "--config", "paper", "--output-dir", str(tmp_path / "r")]
    plain = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and plain.stderr.startswith("error: tokenizer_checkpoint is not set")
    debug = subprocess.run([*command, "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "InputError: tokenizer_checkpoint is not set" in debug.stderr
    assert not (tmp_path / "r").exists()
