"""LaVIT (ICLR 2024). Kept import-free so `--help` stays instant; import the submodules you need:

- ``model.lavit.tokenizer_config``: ``VisualTokenizerConfig`` and presets (group "lavit_tokenizer").
- ``model.lavit.tokenizer``: ``DynamicVisualTokenizer`` (encoder, selector, merger, quantizer, decoder).
- ``model.lavit.official_tokenizer``: loading the released ``visual_tokenizer/`` files.
- ``model.lavit.official``: loading (and writing) a whole released LaVIT directory.
- ``model.lavit.checkpoints``: ``load_for_eval``, a released directory or a ``unified`` run -> an evaluable model
  (an ``llm_pretrain`` run -> its text-only LLM); the weights a training stage starts from (EVA-CLIP encoder,
  stage-1a tokenizer, an ``llm_pretrain`` LLM).
- ``model.lavit.eval_adapter``: ``LavitEvalAdapter``, LaVIT behind ``eval/interface.py``'s request methods.
- ``model.lavit.generation``: text decoding (beam search) and visual-token sampling with classifier-free guidance.
- ``model.lavit.beam_search``: beam search with transformers 4.33's ("released") or the pinned ("modern") scoring.
- ``model.lavit.released_processing``: the released question / answer processing (VizWiz step, lemmatisation).
"""
