"""One error convention for every command: bad input is one line `error: ...` and exit code 2, no traceback.

Bad input is what the user can fix: a missing file, a wrong layout, an unknown or mistyped config key or value.
Set VLM_DEBUG=1 to see the traceback anyway. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

# Exception types that mean "bad input" (a ConfigError and EvalInputError are ValueErrors).
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


def run_cli(main: Callable[[], int]) -> int:
    try:
        return main()
    except BAD_INPUT as err:
        if os.environ.get("VLM_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
