"""One error convention for every command: bad input is one line `error: ...` and exit code 2.

Library code raises `InputError` (or a subclass: `harness.config.ConfigError`, `eval.errors.EvalInputError`, ...)
with a message that names the key, file or value to fix. A command's `main` runs under `run_cli`, which prints
that message as one line on stderr and returns 2. Anything else is a bug and keeps its traceback.

`--debug` on any command line (removed before the command's own parser sees it) or `VLM_DEBUG=1` in the
environment re-raises bad input with its full traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

DEBUG_ENV = "VLM_DEBUG"


class InputError(ValueError):
    """Input the user has to fix (a config key, a missing file, a run directory that does not fit)."""


def debug_requested(argv: list[str] | None = None) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return "--debug" in (sys.argv[1:] if argv is None else argv)


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input": ours, plus a missing/unreadable path named by the OS."""
    return (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def format_error(err: BaseException) -> str:
    """One line: multi-line messages are joined so that the line stays greppable."""
    text = str(err)
    return "error: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


def run_cli(main: Callable[..., int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main(argv)`; bad input -> one `error:` line on stderr and exit code 2.

    `argv` defaults to sys.argv[1:]; a `--debug` in it is taken out (and turns the tracebacks back on)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    try:
        code = main(args)
    except bad_input_types() as err:
        if debug:
            raise
        print(format_error(err), file=sys.stderr, flush=True)
        return 2
    return 0 if code is None else int(code)
