"""Model code: `model.lavit` (LaVIT), `model.summary` (parameter summaries of any preset), and what every family's
loaders share: `model.weights` (weight files) and `model.text_tokenizer` (a LLaMA-style folder's text tokenizer,
SentencePiece's tokenizer.model included).

Kept import-free so that CLIs (`--help`) stay instant; import the submodule you need.
"""
