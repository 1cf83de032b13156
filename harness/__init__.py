"""Shared plumbing for every entry point: configuration, errors, atomic file writes and digests, provenance, data-file
helpers, the mini world. The bottom layer: nothing here imports `model`, `train`, `eval` or `reproduce`."""
