"""LaVIT (ICLR 2024). Kept import-free so `--help` stays instant; import the submodules you need:

- ``model.lavit.tokenizer_config``: ``VisualTokenizerConfig`` and presets (group "lavit_tokenizer").
- ``model.lavit.tokenizer``: ``DynamicVisualTokenizer`` (encoder, selector, merger, quantizer, decoder).
- ``model.lavit.official_tokenizer``: loading the released ``visual_tokenizer/`` files.
"""
