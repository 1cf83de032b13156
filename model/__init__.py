"""Model code: `model.lavit` (LaVIT), `model.vila` (VILA), `model.families` (the family registry: each family's
loader), `model.summary` (parameter summaries of any preset), and what every family's loaders share: `model.weights`
(weight files, and our runs' verified checkpoints) and `model.text_tokenizer` (a LLaMA-style folder's text tokenizer,
SentencePiece's tokenizer.model included). Nothing here imports `train`, `eval` or `reproduce` (README, Architecture).

Kept import-free so that CLIs (`--help`) stay instant; import the submodule you need.
"""
