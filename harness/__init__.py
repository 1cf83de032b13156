"""Shared plumbing for every entry point: configuration, errors, atomic file writes and digests, provenance, data-file
helpers, the mini world. The bottom layer: nothing here imports `model`, `train`, `eval` or `reproduce`."""

from harness import cpu_kernels

# Before any tensor operation of the process: every result of this checkout is computed with the same CPU kernels.
cpu_kernels.pin()
