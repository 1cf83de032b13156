"""Cross-check `decoding="released"` (model/lavit/beam_search.py) against transformers 4.33.2's own `generate`.

The test suite cannot run transformers 4.33 (we pin 5.x), so this is a two-environment check:

    # 1. in this repository's venv: a tiny LaVIT LLM, many caption/VQA inputs, our released and modern outputs
    .venv/bin/python scripts/crosscheck_released_beam_search.py dump /tmp/beam_cases.pt
    # 2. in any environment with torch and transformers==4.33.2 (no project import needed)
    python scripts/crosscheck_released_beam_search.py compare /tmp/beam_cases.pt

`compare` rebuilds the same LlamaForCausalLM in 4.33, calls `generate` exactly as the released
`predict_answers` / `generate` do (inputs_embeds, suppressed non-text ids, 2 beams 8-36 tokens length_penalty 1 /
5 beams 2-10 tokens length_penalty 0 early stopping), and exits 1 unless every sample equals ours. The tiny
model's logits are scaled by 40 and </s> is biased so that </s> competes with longer beams.
"""

from __future__ import annotations

import argparse
import sys

SETTINGS = {
    "caption": dict(num_beams=2, min_new_tokens=8, max_new_tokens=36, length_penalty=1.0, early_stopping=False),
    "vqa": dict(num_beams=5, min_new_tokens=2, max_new_tokens=10, length_penalty=0.0, early_stopping=True),
}
EOS_BIASES = (14.0, 20.0, 26.0, 32.0, 38.0)
SCALE = 40.0


def strip_eos(row: list[int], eos: int = 2) -> list[int]:
    while row and row[-1] == eos:
        row = row[:-1]
    return row


def dump(path: str, seeds: int) -> int:
    import torch

    from model.lavit.configuration import lavit_tiny
    from model.lavit.generation import generate_text
    from model.lavit.modeling_lavit import LavitForCausalLM, LavitHFConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LavitForCausalLM(LavitHFConfig.from_lavit_config(lavit_tiny())).eval()
    llm, h = model.lavit_config.llm, model.lavit_config.llm.hidden_size
    cases = []
    for seed in range(seeds):
        for eos_bias in EOS_BIASES:
            for name, kw in SETTINGS.items():
                g = torch.Generator().manual_seed(seed)
                embeds = [torch.randn(int(torch.randint(1, 5, (1,), generator=g)), h, generator=g) for _ in range(3)]
                lengths = [int(torch.randint(0, 6, (1,), generator=g)) for _ in range(3)]
                prompts = [torch.randint(3, 250, (n,), generator=g) for n in lengths]
                bias = torch.zeros(model.vocab.size)
                bias[llm.eos_token_id] = eos_bias
                hook = model.language_model.lm_head.register_forward_hook(lambda m, i, o, b=bias: o * SCALE + b)
                try:
                    out = {d: generate_text(model, embeds, prompts, decoding=d, **kw) for d in ("released", "modern")}
                finally:
                    hook.remove()
                batch = model.collate([model.understanding_item(e, p) for e, p in zip(embeds, prompts)])
                cases.append(
                    dict(name=name, seed=seed, eos_bias=eos_bias, kw=kw, inputs_embeds=batch.inputs_embeds.clone(),
                         attention_mask=batch.attention_mask.clone(), released=out["released"],
                         modern=[strip_eos(r) for r in out["modern"]])
                )  # fmt: skip
    config = dict(
        vocab_size=model.vocab.size, hidden_size=h, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        rms_norm_eps=llm.rms_norm_eps, max_position_embeddings=llm.max_position_embeddings,
        tie_word_embeddings=False, bos_token_id=llm.bos_token_id, eos_token_id=llm.eos_token_id,
    )  # fmt: skip
    state = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    torch.save(dict(cases=cases, config=config, state=state, suppress=model.vocab.non_text_ids()), path)
    print(f"{len(cases)} cases (3 samples each) written to {path}")
    return 0


def compare(path: str) -> int:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    if transformers.__version__ != "4.33.2":
        print(f"error: compare needs transformers==4.33.2, found {transformers.__version__}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    data = torch.load(path, weights_only=False)
    lm = LlamaForCausalLM(LlamaConfig(**data["config"])).eval()
    missing, unexpected = lm.load_state_dict(data["state"], strict=False)
    if unexpected or any("inv_freq" not in k for k in missing):
        print(f"error: {path}: weights do not fit (missing {missing}, unexpected {unexpected})", file=sys.stderr)
        return 2
    eos = data["config"]["eos_token_id"]
    agree = {"released": 0, "modern": 0}
    for case in data["cases"]:
        bias = torch.zeros(data["config"]["vocab_size"])
        bias[eos] = case["eos_bias"]
        hook = lm.lm_head.register_forward_hook(lambda m, i, o, b=bias: o * SCALE + b)
        kw = case["kw"]
        try:
            with torch.no_grad():
                out = lm.generate(
                    inputs_embeds=case["inputs_embeds"], attention_mask=case["attention_mask"], do_sample=False,
                    num_beams=kw["num_beams"], max_new_tokens=kw["max_new_tokens"],
                    min_new_tokens=kw["min_new_tokens"], suppress_tokens=data["suppress"],
                    bos_token_id=data["config"]["bos_token_id"], eos_token_id=eos, pad_token_id=eos,
                    repetition_penalty=1, length_penalty=kw["length_penalty"],
                    **({"early_stopping": True} if kw["early_stopping"] else {}),
                )  # fmt: skip
        finally:
            hook.remove()
        theirs = [strip_eos(row[1:], eos) for row in out.tolist()]  # row[0] is the BOS placeholder
        agree["released"] += theirs == case["released"]
        agree["modern"] += theirs == case["modern"]
        if theirs != case["released"]:
            print(f"MISMATCH {case['name']} seed={case['seed']} eos_bias={case['eos_bias']}")
            print(f" 4.33: {theirs}\n ours: {case['released']}")
    n = len(data["cases"])
    print(
        f"transformers 4.33.2 generate vs ours on {n} cases (3 samples each): released mode equal in "
        f"{agree['released']}/{n}, modern mode (transformers 5 scoring) equal in {agree['modern']}/{n}"
    )
    return 0 if agree["released"] == n else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="write cases and our outputs (this repository's venv)")
    d.add_argument("path")
    d.add_argument("--seeds", type=int, default=8, help="input seeds (x 5 </s> biases x caption/vqa)")
    c = sub.add_parser("compare", help="run transformers 4.33.2 on the cases and compare")
    c.add_argument("path")
    args = parser.parse_args(argv)
    return dump(args.path, args.seeds) if args.command == "dump" else compare(args.path)


if __name__ == "__main__":
    sys.exit(main())
