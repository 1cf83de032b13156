"""Model code: `model.lavit` (LaVIT) and `model.summary` (parameter summaries of any preset).

Kept import-free so that CLIs (`--help`) stay instant; import the submodule you need.
"""
