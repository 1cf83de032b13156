"""Beam search over a causal LM's next-token logits, with two hypothesis-scoring rules: `released` and `modern`.

LaVIT's numbers were produced with transformers 4.33's beam search on `inputs_embeds`; the transformers we pin (5.x)
scores beams differently, and neither version can be configured to behave like the other, so the search is ours.
Everything except the scoring is shared: the same model calls (prefill on the beam-expanded prompt, one token per
step with a reordered KV cache), the same log-probabilities (log-softmax of float32 logits, then -inf on the
suppressed ids and on </s> before `min_new_tokens`), the same 2 * num_beams candidates per step (top-k of the
accumulated log-probabilities). `modern` is checked token for token against transformers' own `generate`
(tests/test_lavit_beam_search.py); `released` against transformers 4.33.2's `generate` in a side environment
(scripts/crosscheck_released_beam_search.py: 300 of 300 caption/VQA cases, 3 samples each, identical).

Notation: a beam holds n generated tokens; S is the sum of their log-probabilities (for a hypothesis ended by </s>,
S includes log p(</s>) but n does not count </s>); lp = length_penalty; `max_new` = max_new_tokens.

`released` (transformers 4.33, `BeamSearchScorer` + `BeamHypotheses`): generation with `inputs_embeds` starts each
beam from a one-token BOS placeholder (never fed to the model) that counts in the beam's length.
- A candidate ending in </s> among the top num_beams candidates is a finished hypothesis scored S / (n + 1)^lp;
  the running beams are the best num_beams candidates that do not end in </s> (they may rank beyond num_beams).
- Early-stopping test, after each step, per sample, once num_beams hypotheses are kept: early_stopping=True stops;
  False stops when worst kept score >= best candidate's S / (n + 1)^lp, n counting the candidate's tokens (the best
  candidate may itself end in </s>); "never" uses (1 + max_new)^lp instead when lp > 0.
- At max_new tokens the open beams of samples not yet stopped join the hypotheses, scored S / (max_new + 1)^lp.
- A sample keeps its num_beams best hypotheses (a new one enters when there is room or it beats the worst); the
  returned one is the best, the later-added one on a tie.

`modern` (transformers 5): no placeholder (`inputs_embeds` give an empty `input_ids`), and the length is the number
of generated tokens, </s> included.
- A top-num_beams candidate ending in </s> scores S / (n + 1)^lp (the same as `released`); a candidate reaching
  max_new tokens also finishes, scored S / max_new^lp (`released`: S / (max_new + 1)^lp, in finalize).
- Early-stopping test: with all num_beams slots finished, stop improving a sample when the best *running* (not
  ended) beam's S / n^lp (n its tokens) is not above the worst finished score (`released`: the best candidate, over
  n + 1). The whole batch stops when no sample can improve, or (early_stopping=True) all slots are finished.

With lp = 1 the two differ whenever </s> competes with a long beam: `released` keeps searching longer (its bound
S / (n + 1) is less negative) and favours beams that run to `max_new`. With lp = 0 (LaVIT's VQA) only the
end-of-search bookkeeping differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Decoding = Literal["released", "modern"]
DECODINGS = ("released", "modern")

# step(tokens, origin) -> logits (B * num_beams, V). First call: tokens = origin = None, logits after the prompt.
# Later calls: row i's history is the previous step's row origin[i] (reorder caches by `origin`) followed by
# tokens[i]. Rows are grouped by sample: rows b * num_beams .. (b + 1) * num_beams - 1 belong to sample b.
StepFn = Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]

NEG = -1.0e9  # the "impossible" score transformers uses for masked beams (kept: it takes part in ties)


@dataclass(frozen=True)
class BeamSettings:
    num_beams: int
    min_new_tokens: int
    max_new_tokens: int
    eos_token_id: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never" (transformers' meanings)
    suppress_ids: tuple[int, ...] = field(default=(), repr=False)  # ids whose log-probability is set to -inf
    repetition_penalty: float = 1.0  # only 1.0 (none) is supported: LaVIT never penalises repetition

    def validate(self) -> None:
        if not isinstance(self.num_beams, int) or self.num_beams < 2:
            raise ValueError(f"num_beams must be an integer >= 2 for beam search, got {self.num_beams!r}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(
                f"need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1, got "
                f"min_new_tokens={self.min_new_tokens}, max_new_tokens={self.max_new_tokens}"
            )
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.repetition_penalty != 1.0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} is not supported (only 1.0)")


@dataclass
class BeamResult:
    tokens: list[int]  # generated ids, without the BOS placeholder and without the final </s>
    score: float  # the length-normalised score the hypothesis won with
    ended: bool  # True when the hypothesis ended with </s>, False when it ran to max_new_tokens


def step_log_probs(logits: torch.Tensor, generated: int, settings: BeamSettings, suppress: torch.Tensor | None):
    """Log-softmax of float32 logits, then the logits processors (both versions apply them to log-probabilities)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if generated < settings.min_new_tokens:
        logp[:, settings.eos_token_id] = float("-inf")
    if suppress is not None:
        logp = logp.masked_fill(suppress, float("-inf"))
    return logp


def _suppress_mask(settings: BeamSettings, vocab: int, device) -> torch.Tensor | None:
    if not settings.suppress_ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[torch.tensor([i for i in settings.suppress_ids if i < vocab], dtype=torch.long, device=device)] = True
    return mask


@torch.no_grad()
def beam_search(
    step: StepFn, batch_size: int, settings: BeamSettings, decoding: Decoding = "released"
) -> list[BeamResult]:
    """One `BeamResult` per sample. `decoding` picks the scoring rules (module docstring)."""
    settings.validate()
    if decoding == "released":
        return _released_search(step, batch_size, settings)
    if decoding == "modern":
        return _modern_search(step, batch_size, settings)
    raise ValueError(f"unknown decoding {decoding!r}; expected one of {DECODINGS}")


# ------------------------------------------------------------------------------------------------------------
# released: transformers 4.33


class ReleasedHypotheses:
    """The n-best list of one sample under 4.33's rules. `length` is the beam's length *including* the BOS
    placeholder (1 + generated tokens, </s> not counted)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool | str, max_length: int):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_length = max_length  # 1 + max_new_tokens, the placeholder included
        self.beams: list[tuple[float, list[int], bool]] = []  # (score, tokens, ended), in insertion order
        self.worst_score = 1e9

    def add(self, tokens: list[int], sum_logprobs: float, ended: bool) -> None:
        score = sum_logprobs / ((1 + len(tokens)) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens, ended))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _, _) in enumerate(self.beams))  # ties: the earlier one goes
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """cur_len = 1 + tokens of the candidate that `best_sum_logprobs` belongs to (the placeholder counted)."""
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            bound = best_sum_logprobs / self.max_length**self.length_penalty
        else:
            bound = best_sum_logprobs / cur_len**self.length_penalty
        return self.worst_score >= bound

    def best(self) -> BeamResult:
        # A stable sort then pop(): among equal scores the last-inserted wins, as in 4.33's finalize.
        score, tokens, ended = sorted(self.beams, key=lambda b: b[0])[-1]
        return BeamResult(tokens=tokens, score=score, ended=ended)


def _released_search(step: StepFn, batch_size: int, s: BeamSettings) -> list[BeamResult]:
    nb, k = s.num_beams, 2 * s.num_beams
    running = torch.zeros(batch_size, nb)
    running[:, 1:] = NEG  # only beam 0 expands at the first step (all beams start identical)
    running = running.view(-1)
    sequences: list[list[int]] = [[] for _ in range(batch_size * nb)]
    books = [
        ReleasedHypotheses(nb, s.length_penalty, s.early_stopping, max_length=1 + s.max_new_tokens)
        for _ in range(batch_size)
    ]
    done = [False] * batch_size
    tokens = origin = None
    suppress = None
    for t in range(s.max_new_tokens):  # t = tokens generated so far
        logits = step(tokens, origin)
        if suppress is None and s.suppress_ids:
            suppress = _suppress_mask(s, logits.shape[-1], logits.device)
        logp = step_log_probs(logits, t, s, suppress)
        vocab = logp.shape[-1]
        scores = (logp + running.to(logp.device)[:, None]).view(batch_size, nb * vocab)
        top, index = torch.topk(scores, k, dim=1, largest=True, sorted=True)
        top, index = top.cpu(), index.cpu()
        next_scores = torch.zeros(batch_size, nb)
        next_tokens = torch.full((batch_size, nb), s.eos_token_id, dtype=torch.long)
        next_origin = torch.zeros(batch_size, nb, dtype=torch.long)
        for b in range(batch_size):
            if done[b]:  # a finished sample only pads (4.33 points it at row 0; its own row changes nothing)
                next_origin[b] = b * nb
                continue
            slot = 0
            for rank in range(k):
                row = b * nb + int(index[b, rank]) // vocab
                token = int(index[b, rank]) % vocab
                if token == s.eos_token_id:
                    if rank >= nb:  # an </s> outside the top num_beams candidates is dropped
                        continue
                    books[b].add(list(sequences[row]), float(top[b, rank]), ended=True)
                else:
                    next_scores[b, slot] = top[b, rank]
                    next_tokens[b, slot] = token
                    next_origin[b, slot] = row
                    slot += 1
                if slot == nb:
                    break
            # cur_len = the placeholder + t tokens + the candidate's new one.
            done[b] = done[b] or books[b].is_done(float(top[b, 0]), cur_len=t + 2)
        origin, tokens = next_origin.view(-1), next_tokens.view(-1)
        sequences = [sequences[int(o)] + [int(x)] for o, x in zip(origin, tokens)]
        running = next_scores.view(-1)
        if all(done):
            break
    for b in range(batch_size):  # finalize: open beams of samples that never stopped
        if not done[b]:
            for j in range(nb):
                books[b].add(sequences[b * nb + j], float(running[b * nb + j]), ended=False)
    return [book.best() for book in books]


def released_output_ids(results: list[BeamResult], max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
    """The generated ids 4.33's `BeamSearchScorer.finalize` returns for a batch, without its padding: the output is
    sent_max_len = min(longest hypothesis + 1, max_length) wide (lengths with the BOS placeholder; max_length =
    1 + max_new_tokens), and </s> is written after every hypothesis shorter than that (the rest of a row is padding).
    So a hypothesis ended by </s> carries it, and one cut by the length limit does not; the decoded text is the
    same either way (special tokens are skipped)."""
    lengths = [1 + len(r.tokens) for r in results]  # the placeholder counted, </s> not (it is never in `tokens`)
    width = min(max(lengths, default=1) + 1, 1 + max_new_tokens)
    return [list(r.tokens) + ([eos_token_id] if n < width else []) for r, n in zip(results, lengths)]


# ------------------------------------------------------------------------------------------------------------
# modern: transformers 5


def _modern_search(step: StepFn, batch_size: int, s: BeamSettings) -> list[BeamResult]:
    nb, k, max_new, lp = s.num_beams, 2 * s.num_beams, s.max_new_tokens, s.length_penalty
    pad = s.eos_token_id
    running = torch.zeros(batch_size, nb)
    running[:, 1:] = NEG
    seqs = torch.full((batch_size, nb, max_new), pad, dtype=torch.long)  # running sequences
    fin_seqs = seqs.clone()
    fin_scores = torch.full((batch_size, nb), NEG)
    fin_len = torch.zeros(batch_size, nb, dtype=torch.long)
    fin_done = torch.zeros(batch_size, nb, dtype=torch.bool)
    improvable = torch.ones(batch_size, 1, dtype=torch.bool)
    top_nb = torch.arange(k) < nb
    offsets = torch.arange(batch_size)[:, None] * nb
    tokens = origin = None
    suppress = None
    for t in range(max_new):
        logits = step(tokens, origin)
        if suppress is None and s.suppress_ids:
            suppress = _suppress_mask(s, logits.shape[-1], logits.device)
        logp = step_log_probs(logits, t, s, suppress).cpu()
        vocab = logp.shape[-1]
        scores = (logp.view(batch_size, nb, vocab) + running[:, :, None]).view(batch_size, nb * vocab)
        top, index = torch.topk(scores, k, dim=1)
        beam, token = index // vocab, index % vocab
        cand = torch.take_along_dim(seqs, beam[:, :, None], dim=1)  # (b, k, max_new)
        cand[:, :, t] = token
        hits = (token == s.eos_token_id) | (t + 1 >= max_new)  # ended by </s> or by the length limit
        # Running beams: the best num_beams candidates that did not just end.
        masked = top + hits.float() * NEG
        keep = torch.topk(masked, nb, dim=1).indices
        running = masked.gather(1, keep)
        seqs = torch.take_along_dim(cand, keep[:, :, None], dim=1)
        origin = (beam.gather(1, keep) + offsets).view(-1)
        tokens = token.gather(1, keep).view(-1)
        # Finished beams: top-num_beams candidates that ended, length = t + 1 generated tokens (</s> included).
        normed = top / ((t + 1) ** lp)
        normed = normed + (fin_done.all(1, keepdim=True) & (s.early_stopping is True)).float() * NEG
        normed = normed + (~improvable).float() * NEG
        normed = normed + (~(hits & top_nb[None, :])).float() * NEG
        merged = torch.cat([fin_scores, normed], dim=1)
        pick = torch.topk(merged, nb, dim=1).indices
        fin_scores = merged.gather(1, pick)
        fin_seqs = torch.take_along_dim(torch.cat([fin_seqs, cand], 1), pick[:, :, None], dim=1)
        fin_len = torch.cat([fin_len, torch.full((batch_size, k), t + 1)], 1).gather(1, pick)
        fin_done = torch.cat([fin_done, hits & top_nb[None, :]], 1).gather(1, pick)
        # Can a running beam still beat the worst finished one? (transformers' heuristic, n = t + 1 tokens)
        cur = t + 1
        best_len = max_new if (s.early_stopping == "never" and lp > 0.0) else cur
        best_possible = running[:, :1] / (best_len**lp)
        worst = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, torch.full_like(fin_scores, NEG))
        improvable = improvable & (best_possible > worst).any(dim=1, keepdim=True)
        all_full = bool(fin_done.all()) and s.early_stopping is True
        if not bool(improvable.any()) or all_full or bool(hits.all()):
            break
    results = []
    for b in range(batch_size):
        n = int(fin_len[b, 0])
        row = fin_seqs[b, 0, :n].tolist()
        ended = bool(n) and row[-1] == s.eos_token_id
        results.append(BeamResult(tokens=row[:-1] if ended else row, score=float(fin_scores[b, 0]), ended=ended))
    return results


# ------------------------------------------------------------------------------------------------------------
# The model side: a step function over a transformers causal LM


def causal_lm_step(language_model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, num_beams: int) -> StepFn:
    """A `StepFn` over `language_model` (a transformers causal LM) for a left-padded embedding batch (B, L, h):
    the rows are expanded to B * num_beams (as `generate` does), the prompt is prefilled into a `DynamicCache`,
    then each step feeds the new tokens with positions counted over real tokens only (`positions_from_mask`)."""
    from transformers import DynamicCache

    from model.lavit.modeling_lavit import positions_from_mask

    embeds = inputs_embeds.repeat_interleave(num_beams, dim=0)
    state = {"mask": attention_mask.long().repeat_interleave(num_beams, dim=0)}
    cache = DynamicCache(config=language_model.config)

    def step(tokens: torch.Tensor | None, origin: torch.Tensor | None) -> torch.Tensor:
        mask = state["mask"]
        if tokens is None:
            out = language_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions_from_mask(mask),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        else:
            device = mask.device
            origin = origin.to(device)
            cache.reorder_cache(origin)
            mask = torch.cat([mask[origin], torch.ones_like(mask[:, :1])], dim=1)
            state["mask"] = mask
            out = language_model(
                input_ids=tokens.to(device)[:, None],
                attention_mask=mask,
                position_ids=positions_from_mask(mask)[:, -1:],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :]

    return step
