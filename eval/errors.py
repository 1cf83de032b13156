"""Error types shared by the evaluation readers, metrics and CLIs.

Bad input (a missing file, malformed JSON, an unknown or duplicate id, an empty prediction set) is the
user's to fix, so it gets one exception type whose message names the file and the offending id. CLIs catch
it and print the message without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import InputError, run_cli  # noqa: F401  (run_cli: the one CLI convention, re-exported)


class EvalInputError(InputError):
    """Input that cannot be evaluated as given; the message names the file and, where there is one, the id."""

    def __init__(self, message: str, path: str | Path | None = None, item_id: object = None):
        self.path = str(path) if path is not None else None
        self.item_id = item_id
        where = f"{path}: " if path is not None else ""
        super().__init__(where + message)


class MissingPredictionsError(EvalInputError):
    """Raised only in strict mode: some ground-truth ids have no prediction."""

    def __init__(self, path: str | Path | None, examples: list, n_missing: int, total: int):
        shown = ", ".join(repr(i) for i in examples[:10])
        more = f" (and {n_missing - len(examples[:10])} more)" if n_missing > len(examples[:10]) else ""
        super().__init__(
            f"{n_missing} of {total} ground-truth ids have no prediction: {shown}{more}; "
            "without --strict they count as unanswered (score 0) and are reported",
            path,
            examples[0] if examples else None,
        )
        self.examples = examples
        self.n_missing = n_missing
