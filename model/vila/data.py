"""VILA's training data: the sample formats of its three stages, the streams that read them, and their encoding.

Every sample is first a list of `Segment`s (text, image, end-of-sequence), each marked supervised or not; one
function (`encode`) turns any of them into `input_ids` (ONE `image_token_index` per image, the model expands it),
`labels` (IGNORE_INDEX where not supervised) and the sample's images. The formats (paper §2-3, the released
scripts' data loaders):

    MMC4 (interleaved)   official JSONL fields: `text_list` (sentences), `image_info` (list of {`image_name` or
                         `image_base64`, `matched_text_index`, `matched_sim`}). At most MAX_IMAGES_PER_DOC (6) images
                         per document: the first six of `image_info`, each placed *before* the sentence it matches
                         (ties keep `image_info` order); sentences joined by a space, no space around an image
                         ("s0<image>s1 s2", the released `LazyMMC4Dataset`'s " ".join and whitespace clean-up); one
                         EOS at the end. Every text token is supervised.
        "pairs"          the MMC4-pairs ablation (Table 3): only (image, matched sentence) pairs, each its own row
                         `<image>sentence<eos>` as COYO's pairs are (`Rows`); unmatched sentences are dropped. (The
                         release has no MMC4-pairs loader; its COYO loader shuffles shards whose path names "mmc4",
                         i.e. the pairs were read as COYO. Ours keep a document's pairs together, in its order.)
        "reformatted"    the §4.4 ablation: `<im1><im2>...<txt1><txt2>...` (all images first, then all sentences).
    COYO (pairs)         img2dataset tar shards (KEY.jpg/png + KEY.txt), COYO_PAIRS_PER_SAMPLE (4) consecutive pairs
                         per sample, each its own row `<image>caption<eos>` with its own `<s>` (`Rows`): the released
                         `LazyCoyoDataset` (v1.0 and vila1.5) has CONCAT_SAMPLES = False, so it tokenizes the four
                         prompts separately and the collator makes them four sequences. A COYO-trained model never
                         sees two images in one context, the premise of the paper's reading of its 4-shot results
                         (§3.2: "it never sees more than one image during pre-training").
    Conversations        LLaVA JSON (a list of records, or JSONL): {"image": path (optional), "conversations":
                         [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]},
                         rendered with a conversation template (`model/vila/conversation.py`); labels only on the
                         assistant turns (for hermes-2 and llama_3 exactly where the release's token counting puts
                         them, quirks included: `release_counted_supervision`). Stage 0 uses it with the "plain"
                         template (LLaVA's caption alignment data),
                         stage 2 with the model's template (vicuna_v1 for VILA-7B/13B). A record without "image" is a
                         text-only instruction (joint SFT, Table 4).

A `Rows` sample (COYO, MMC4-pairs) is one draw of the blend that trains as several sequences: `encode` is called
per row and the batch holds each row; the micro-batch size counts draws, as the released per-device batch counts
dataset items (a COYO item is four rows).

Sequences are cut at `max_len` positions counted *after* image expansion (each image takes tokens_per_image
positions): text is cut at a token, an image that does not fit ends the sample (the released loaders drop images
past the limit). Samples without a supervised token are skipped (counted by the `Mapped` stream as skipped_map).

`write_miniworld_data` converts the mini world's train split into these official layouts (MMC4 JSONL + image files,
LLaVA JSON), so the mini runs read their data through exactly the code paths a paper-scale run does.
"""

from __future__ import annotations

import base64
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from harness.data import epoch_order, expand_files
from harness.miniworld import VQA_PROMPT, qa_document_parts, yes_no_answer

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
MAX_IMAGES_PER_DOC = 6  # the released MMC4 loader keeps at most 6 images per document
COYO_PAIRS_PER_SAMPLE = 4  # the released COYO loader reads 4 pairs per sample (each its own row)
Mmc4Format = Literal["interleaved", "pairs", "reformatted"]


# ---------------------------------------------------------------------------------------------
# Segments: the format-independent form of a sample.


# A released preprocessor's label rule: (the sample's text with "<image>" placeholders, count(s) = the number of ids
# the release's `tokenizer_image_token(s)` gives, max_len) -> per id of the text, whether it is supervised.
LabelRule = Callable[[str, Callable[[str], int], int], list[bool]]


@dataclass
class Segment:
    kind: Literal["text", "image", "eos", "rule"]
    text: str = ""  # kind "text"
    image: Any = None  # kind "image": a PIL image (or anything `encode`'s caller can turn into pixels)
    supervised: bool = True  # labels on this segment's tokens (images are never supervised)
    # kind "rule" (zero-width, at most one per sample): `encode` takes the labels from this rule over the whole
    # sample instead of from the segments' `supervised` flags (the hermes-2 / llama_3 preprocessors count tokens)
    rule: LabelRule | None = None


class Rows(list):
    """One sample of a corpus that trains as several sequences (a list of segment lists, each its own row)."""


def text(s: str, supervised: bool = True) -> Segment:
    return Segment("text", text=s, supervised=supervised)


def image(img: Any) -> Segment:
    return Segment("image", image=img, supervised=False)


def eos(supervised: bool = True) -> Segment:
    return Segment("eos", supervised=supervised)


def layout(segments: Sequence[Segment]) -> str:
    """A readable rendering for tests and logs: images as <image>, EOS as <eos>."""
    return "".join(IMAGE_PLACEHOLDER if s.kind == "image" else "<eos>" if s.kind == "eos" else s.text for s in segments)


# ---------------------------------------------------------------------------------------------
# MMC4 documents.


def mmc4_image_bytes(info: dict, image_root: str | Path | None) -> bytes | None:
    """The bytes of one `image_info` entry: inline `image_base64`, or the file `image_root/image_name`."""
    if info.get("image_base64"):
        return base64.b64decode(info["image_base64"])
    name = info.get("image_name")
    if name and image_root:
        path = Path(image_root) / name
        if path.is_file():
            return path.read_bytes()
    return None


def mmc4_segments(
    doc: dict, load_image: Callable[[dict], Any], fmt: Mmc4Format = "interleaved", max_images: int = MAX_IMAGES_PER_DOC
) -> list[Segment] | None:
    """One MMC4 document as segments (module docstring). `load_image(image_info entry)` returns the image or None
    (missing / undecodable: the image is left out). None when the document has no sentence or no usable image."""
    sentences = [str(s) for s in doc.get("text_list") or []]
    if not sentences:
        return None
    placed: list[tuple[int, Any]] = []  # (sentence index, image), in image_info order
    for info in (doc.get("image_info") or [])[:max_images]:
        index = info.get("matched_text_index")
        if not isinstance(index, int) or not 0 <= index < len(sentences):
            continue
        img = load_image(info)
        if img is not None:
            placed.append((index, img))
    if not placed:
        return None
    placed.sort(key=lambda p: p[0])  # stable: images matched to the same sentence keep their order
    out: list[Segment] = []
    if fmt == "pairs":
        return Rows([image(img), text(sentences[index]), eos()] for index, img in placed)
    if fmt == "reformatted":
        out += [image(img) for _, img in placed]
        out.append(text(" ".join(sentences)))
        out.append(eos())
        return out
    if fmt != "interleaved":
        raise ValueError(f"MMC4 format must be interleaved, pairs or reformatted, got {fmt!r}")
    by_sentence: dict[int, list[Any]] = {}
    for index, img in placed:
        by_sentence.setdefault(index, []).append(img)
    for i, sentence in enumerate(sentences):
        images = by_sentence.get(i, [])
        out += [image(img) for img in images]
        if images:
            out.append(text(sentence))  # "<image>sentence": the release removes the space on either side of an image
        else:
            out.append(text((" " if out else "") + sentence))
    out.append(eos())
    return _merge_text(out)


def _merge_text(segments: list[Segment]) -> list[Segment]:
    """Adjacent text segments with the same supervision become one (tokenized together, as one string would be)."""
    out: list[Segment] = []
    for s in segments:
        if out and s.kind == "text" and out[-1].kind == "text" and out[-1].supervised == s.supervised:
            out[-1] = text(out[-1].text + s.text, s.supervised)
        else:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# COYO pairs.


def coyo_segments(pairs: Sequence[tuple[Any, str]]) -> list[Segment]:
    """`<image>caption<eos>` for each (image, caption), concatenated (as `Rows` splits them: one row per pair)."""
    out: list[Segment] = []
    for img, caption in pairs:
        out += [image(img), text(caption.strip()), eos()]
    return out


def coyo_rows(pairs: Sequence[tuple[Any, str]]) -> Rows:
    """One COYO sample as the released loader trains it: each (image, caption) its own row `<image>caption<eos>`."""
    return Rows(coyo_segments([pair]) for pair in pairs)


# ---------------------------------------------------------------------------------------------
# LLaVA conversations.

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """The (role, text) turns of a LLaVA record; a record with an image gets exactly one `<image>` in the first
    user turn (LLaVA's convention: moved to the front when it is elsewhere, added when it is missing)."""
    turns = []
    for t in record.get("conversations") or []:
        role = ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            raise ValueError(f"conversation turn with unknown role {t.get('from')!r} (expected human/gpt)")
        turns.append((role, str(t.get("value", ""))))
    if not turns or turns[0][0] != "user":
        raise ValueError("a conversation must start with a human turn")
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError("conversation turns must alternate human/gpt")
    if record.get("image"):
        first = turns[0][1].replace(IMAGE_PLACEHOLDER, "").strip()
        turns[0] = ("user", IMAGE_PLACEHOLDER + ("\n" + first if first else ""))
        turns[1:] = [(r, v.replace(IMAGE_PLACEHOLDER, "").strip()) for r, v in turns[1:]]
    else:
        turns = [(r, v.replace(IMAGE_PLACEHOLDER, "").strip()) for r, v in turns]
    return turns


def conversation_segments(turns: list[tuple[str, str]], prompt: Callable[[list[tuple[str, str | None]]], str], img: Any = None) -> list[Segment]:
    """Render alternating (role, text) `turns` with a template's `prompt(pairs)` (pairs of (user, assistant or
    None), `model/vila/conversation.py`) and supervise only what each assistant turn adds.

    The assistant span of exchange k is `prompt(pairs[:k+1])` minus `prompt(pairs[:k] + [(user_k, None)])` (the
    generation prompt at that point), so training sees exactly the prompt text evaluation generates from, and the
    labels cover the answer and the template's end-of-turn separator (`</s>` of vicuna_v1, "\n" of plain).

    The hermes-2 (SeparatorStyle.MPT) and llama_3 (SeparatorStyle.LLAMA_3) templates add a "rule" segment: the
    release masks them by counting tokens of its rounds, with offsets that do not always land on the turn
    boundaries above, and `encode` applies that count instead (`release_counted_supervision`). Their trailing
    user turn, if any, is kept as the release renders it (it makes the release drop every label)."""
    pairs = [(turns[i][1], turns[i + 1][1] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)]
    template = getattr(prompt, "__self__", None)  # a bound Conversation.prompt tells its template
    style = getattr(template, "style", None)
    if style == "plain":
        return _plain_segments(pairs, template.sep, img)
    segments: list[Segment] = []
    done = ""
    for k, (user, answer) in enumerate(pairs):
        if answer is None:
            if style in RELEASE_COUNTED_STYLES:
                segments += _split_images(_trailing_user_text(template, prompt(pairs), done), img, supervised=False)
            break  # a trailing user turn has nothing to supervise
        open_prompt = prompt(pairs[:k] + [(user, None)])
        closed = prompt(pairs[: k + 1])
        if not open_prompt.startswith(done) or not closed.startswith(open_prompt):
            raise ValueError("the conversation template does not render turns as prefixes of each other")
        segments += _split_images(open_prompt[len(done) :], img, supervised=False)
        segments.append(text(closed[len(open_prompt) :], supervised=True))
        done = closed
    if style in RELEASE_COUNTED_STYLES:
        rule = partial(release_counted_supervision, style=style, sep=template.sep, assistant=template.roles[1])
        segments.append(Segment("rule", supervised=False, rule=rule))
    n_images = sum(s.kind == "image" for s in segments)
    if n_images != (1 if img is not None else 0):
        raise ValueError(f"conversation renders {n_images} images, record has {1 if img is not None else 0}")
    return [s for s in segments if s.kind != "text" or s.text]


def _trailing_user_text(template: Any, open_prompt: str, done: str) -> str:
    """A last user turn without an answer as the release's `get_prompt` ends a training text with it (MPT /
    LLAMA_3: role + text + sep, no assistant role after it): our generation prompt without its assistant role."""
    if not open_prompt.startswith(done) or not open_prompt.endswith(template.roles[1]):
        raise ValueError("the conversation template does not render turns as prefixes of each other")
    return open_prompt[len(done) : len(open_prompt) - len(template.roles[1])]


def _plain_segments(pairs: list[tuple[str, str | None]], sep: str, img: Any) -> list[Segment]:
    """The plain template's training sample as the release's `preprocess_plain` (llava/data/dataset.py) builds it:
    one exchange, the user text replaced by "<image>" alone, then the caption and the template's "\n" (supervised);
    only "<image>" is masked."""
    if len(pairs) != 1 or pairs[0][1] is None:
        raise ValueError(f"the plain template takes one human turn and one gpt turn; the record has {len(pairs)} exchanges")
    if img is None:
        raise ValueError("the plain template is for image-caption records; this record has no image")
    return [image(img), text(pairs[0][1] + sep, supervised=True)]


def _split_images(s: str, img: Any, supervised: bool) -> list[Segment]:
    parts = s.split(IMAGE_PLACEHOLDER)
    out = [text(parts[0], supervised)]
    for part in parts[1:]:
        out += [image(img), text(part, supervised)]
    return out


# ---------------------------------------------------------------------------------------------
# The hermes-2 / llama_3 label masks of VILA 1.5 (NVlabs/VILA branch vila1.5, llava/data/dataset.py
# `preprocess_mpt` / `preprocess_llama_3`). Both mask by token counts, not by turn boundaries:
#
#   text     system + sep + (user role + question + sep + assistant role + answer + sep) per exchange
#   rounds   the text split at sep, regrouped: [system, user 1, answer 1] joined by sep, then [user k, answer k]
#   per round, with parts = round.split(sep + assistant role) (a round that does not split in two ends the loop):
#            masked:  count(parts[0] + sep + assistant role)        from the running position cur
#            advance: MPT     count(round) + count(sep)             (sep tokenized on its own)
#                     LLAMA_3 count(round) + 1                      ("+1 for <|eot_id|>"; the -1 for <s> and +1
#                                                                    on the instruction cancel out)
#   then everything from cur on is masked, and if cur < model_max_length and cur differs from the number of ids,
#   every label is masked ("WARNING: tokenization mismatch ... (ignored)").
#
# count(s) is len(tokenizer_image_token(s)), which includes the tokenizer's <s> when it adds one. So with a
# tokenizer that adds <s> the counts run ahead: hermes-2 by 2 per round (every sample entirely masked), llama_3 by 1
# per round after the first (every multi-turn sample entirely masked; a single exchange is right). Without <s>
# (Yi's tokenizer, which VILA1.5-40B's hermes-2 uses) both land on the turns except where a piece tokenizes
# differently alone than inside the whole text: a token straddling the end of the instruction (the role's "\n"
# merged with the answer's first letter) is masked with the instruction, where our own split gives it to the
# answer. The `tokenizer.legacy` correction of upstream LLaVA's
# preprocess_mpt is not in VILA's. These are the release's bugs; we reproduce them, since they decide which tokens
# the released models were trained on.

RELEASE_COUNTED_STYLES = ("mpt", "llama_3")


def release_rounds(conversation: str, sep: str) -> list[str]:
    """The rounds the release measures: system + first exchange, then one per later exchange."""
    pieces = conversation.split(sep)
    return [sep.join(pieces[:3])] + [sep.join(pieces[i : i + 2]) for i in range(3, len(pieces), 2)]


def release_counted_supervision(
    conversation: str, count: Callable[[str], int], max_len: int, *, style: str, sep: str, assistant: str
) -> list[bool]:
    """Per id of `conversation` (count(conversation) ids), whether `preprocess_mpt` (style "mpt") or
    `preprocess_llama_3` (style "llama_3") leaves its label on (see the comment above)."""
    n = count(conversation)
    supervised = [True] * n
    answer_start = sep + assistant
    cur = 0
    for rou in release_rounds(conversation, sep):
        if rou == "":
            break
        parts = rou.split(answer_start)
        if len(parts) != 2:
            break  # a trailing user turn, or a message that itself contains sep + assistant role
        instruction = count(parts[0] + answer_start)
        if style == "mpt":
            advance = count(rou) + count(sep)
        elif style == "llama_3":
            advance = count(rou) + 1
        else:
            raise ValueError(f"no released token-counting rule for style {style!r}")
        _mask(supervised, cur, cur + instruction)
        cur += advance
    _mask(supervised, cur, n)
    if cur < max_len and cur != n:
        return [False] * n  # the release's "tokenization mismatch": the whole sample is ignored
    return supervised


def _mask(supervised: list[bool], start: int, end: int) -> None:
    """supervised[start:end] = False with Python's slice rules, as the release's `target[start:end] = IGNORE_INDEX`
    on a tensor (an end before the start masks nothing)."""
    supervised[start:end] = [False] * len(supervised[start:end])


# ---------------------------------------------------------------------------------------------
# Encoding.


@dataclass
class Encoded:
    input_ids: list[int]  # one image_token_index per image
    labels: list[int]  # IGNORE_INDEX where not supervised (always at image placeholders)
    images: list[Any] = field(default_factory=list)  # in order of appearance
    length: int = 0  # positions after expansion (each image = tokens_per_image)

    def supervised_targets(self) -> int:
        """Labels the model predicts: every supervised position but the first of the sequence."""
        return sum(1 for l in self.labels[1:] if l != IGNORE_INDEX)


def encode(
    segments: Sequence[Segment],
    tokenize: Callable[[str], list[int]],
    *,
    image_token_index: int,
    tokens_per_image: int,
    bos_id: int | None,
    eos_id: int,
    max_len: int,
    eos_text: str | None = None,
) -> Encoded | None:
    """Segments -> ids and labels, `<s>` first (unsupervised), cut at `max_len` expanded positions (module
    docstring). None when nothing supervised is left.

    The text is tokenized as the released code does it (llava/mm_utils.py `tokenizer_image_token`, called by
    llava/data/dataset.py `preprocess_v1` / `preprocess_llama_2` / `preprocess_plain` and the MMC4/COYO datasets):
    the whole sample at once, split only at images, each stretch between images tokenized as one string. A
    segment is never tokenized on its own, because a tokenizer does not split text at our segment boundaries: a
    SentencePiece answer tokenized alone would start with an extra "▁". With `eos_text` (the tokenizer's "</s>")
    an EOS segment is that text inside the stretch, as the released datasets append `tokenizer.eos_token`;
    without it, the EOS id is put between separately tokenized stretches.

    Which segment a token belongs to follows from lengths, as the released preprocessors mask instructions by
    lengths: the tokens of the stretch up to a segment's end are counted by tokenizing that prefix; a token that
    straddles the boundary (the prefix's tokens then stop matching) goes with the text after it.

    A "rule" segment (hermes-2, llama_3) replaces all of that labelling: the rule is applied to the whole sample's
    text with the release's counts, len(`tokenizer_image_token`(s)) = [<s>] + the stretches' ids + one per image,
    and the labels are its verdict on the ids kept (images always masked)."""
    rule = next((seg.rule for seg in segments if seg.kind == "rule"), None)
    segments = [seg for seg in segments if seg.kind != "rule"]
    # Stretches of text between images (and between EOS ids when there is no eos_text): each a list of
    # (text, supervised) pieces; images and EOS ids as markers between them.
    items: list[tuple[str, Any]] = []  # ("text", [(text, supervised), ...]) | ("image", img) | ("eos", supervised)
    for seg in segments:
        if seg.kind == "image":
            items.append(("image", seg.image))
        elif seg.kind == "eos" and eos_text is None:
            items.append(("eos", seg.supervised))
        else:
            piece = (eos_text if seg.kind == "eos" else seg.text, seg.supervised)
            if items and items[-1][0] == "text":
                items[-1][1].append(piece)
            else:
                items.append(("text", [piece]))

    ids: list[int] = [] if bos_id is None else [bos_id]
    labels: list[int] = [] if bos_id is None else [IGNORE_INDEX]
    images: list[Any] = []
    length = len(ids)
    for kind, value in items:
        if kind == "image":
            if length + tokens_per_image > max_len:
                break  # the released loaders drop images past the limit; the sample ends here
            ids.append(image_token_index)
            labels.append(IGNORE_INDEX)
            images.append(value)
            length += tokens_per_image
            continue
        if kind == "eos":
            toks, sup = [eos_id], [value]
        else:
            toks, sup = _tokenize_stretch(value, tokenize)
        toks, sup = toks[: max_len - length], sup[: max_len - length]
        ids += toks
        labels += [t if s else IGNORE_INDEX for t, s in zip(toks, sup)]
        length += len(toks)
        if length >= max_len:
            break
    if rule is not None:
        labels = _rule_labels(rule, segments, ids, tokenize, bos_id, image_token_index, max_len, eos_text)
    out = Encoded(ids, labels, images, length)
    return out if out.supervised_targets() > 0 else None


def _rule_labels(rule: LabelRule, segments: Sequence[Segment], ids: list[int], tokenize: Callable[[str], list[int]],
                 bos_id: int | None, image_token_index: int, max_len: int, eos_text: str | None) -> list[int]:
    """The labels a "rule" segment gives the ids `encode` kept (a prefix of the whole sample's when it was cut)."""
    if any(seg.kind == "eos" for seg in segments) and eos_text is None:
        raise ValueError("a sample labelled by a rule needs eos_text for its EOS segments")
    whole = "".join(IMAGE_PLACEHOLDER if s.kind == "image" else eos_text if s.kind == "eos" else s.text for s in segments)

    def count(s: str) -> int:  # len(tokenizer_image_token(s)): <s> if the tokenizer adds one, then each stretch
        chunks = s.split(IMAGE_PLACEHOLDER)
        return (bos_id is not None) + len(chunks) - 1 + sum(len(tokenize(c)) for c in chunks if c)

    supervised = rule(whole, count, max_len)
    if len(supervised) < len(ids):
        raise ValueError(f"the label rule covers {len(supervised)} ids, the sample has {len(ids)}")
    return [t if ok and t != image_token_index else IGNORE_INDEX for t, ok in zip(ids, supervised)]


def _tokenize_stretch(pieces: list[tuple[str, bool]], tokenize: Callable[[str], list[int]]) -> tuple[list[int], list[bool]]:
    """The ids of the pieces' concatenation and, per id, whether it is supervised (see `encode`)."""
    whole = "".join(t for t, _ in pieces)
    if not whole:
        return [], []
    toks = tokenize(whole)
    supervised: list[bool] = []
    prefix = ""
    for k, (piece, sup) in enumerate(pieces):
        prefix += piece
        if k == len(pieces) - 1:
            end = len(toks)
        else:
            head = tokenize(prefix) if prefix else []
            end = 0
            while end < min(len(head), len(toks)) and head[end] == toks[end]:
                end += 1
        supervised += [sup] * max(0, end - len(supervised))
    return toks, supervised


# ---------------------------------------------------------------------------------------------
# Streams (resume-exact, like train/data.py's: the state is a few integers).


def read_records(files: Sequence[str]) -> list[dict]:
    """LLaVA JSON files (a list of records) or JSONL, concatenated in sorted file order."""
    records: list[dict] = []
    for path in expand_files(files, "JSON"):
        raw = Path(path).read_text()
        if path.endswith(".jsonl"):
            items = [json.loads(l) for l in raw.splitlines() if l.strip()]
        else:
            items = json.loads(raw)
            if not isinstance(items, list):
                raise ValueError(f"{path}: expected a JSON list of records (LLaVA layout)")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"{path}: record {i} is not an object")
            item.setdefault("_file", path)  # image paths are relative to an image folder, or to the file
        records += items
    return records


class RecordList:
    """Records held in memory (LLaVA JSON: ~1M records at most), walked in a per-epoch permutation; rank r keeps
    positions r, r+W, ... of the global order (every rank sees the same global batches at any world size)."""

    def __init__(self, records: list[dict], seed: int = 0, rank: int = 0, world_size: int = 1):
        if not records:
            raise ValueError("no records")
        self.records, self.seed, self.rank, self.world_size = records, seed, rank, world_size
        self.epoch, self.pos = 0, rank
        self._order = epoch_order(len(records), seed, 0)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while self.pos >= len(self.records):
            self.epoch += 1
            self.pos -= len(self.records)
            self._order = epoch_order(len(self.records), self.seed, self.epoch)
        record = self.records[self._order[self.pos]]
        self.pos += self.world_size
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "num_records": len(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_records"] != len(self.records):
            raise ValueError(f"stream state was saved over {state['num_records']} records, now there are {len(self.records)}")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = epoch_order(len(self.records), self.seed, self.epoch)

    def stats(self) -> dict[str, int]:
        return {}


class Grouped:
    """Lists of `n` consecutive items of a stream (COYO: 4 pairs per sample); holds nothing between groups."""

    def __init__(self, stream, n: int):
        if n < 1:
            raise ValueError(f"group size must be >= 1, got {n}")
        self.stream, self.n = stream, n

    def __iter__(self):
        return self

    def __next__(self) -> list:
        return [next(self.stream) for _ in range(self.n)]

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def stats(self):
        return self.stream.stats()


def open_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def record_image(record: dict, image_folder: str | None):
    """The image of a LLaVA record: `image` relative to `image_folder` (LLaVA's --image_folder), else to the JSON
    file's directory, or absolute. Raises FileNotFoundError naming the path."""
    name = record["image"]
    base = Path(image_folder) if image_folder else Path(record.get("_file", ".")).parent
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        raise FileNotFoundError(f"image {path} of a conversation record not found")
    return open_image(path.read_bytes())


# ---------------------------------------------------------------------------------------------
# The mini world in these layouts.

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."  # LLaVA-1.5's COCO caption prompt
VQA_SUFFIX = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer VQA prompt


@dataclass
class MiniWorldImage:
    image_id: int
    png: bytes
    captions: list[str]
    questions: list[tuple[str, str]]  # (question, answer)


def _miniworld_images(world_root: Path) -> list[MiniWorldImage]:
    """Every train image of the mini world's shards with its captions and questions, in image-id order."""
    images: dict[int, MiniWorldImage] = {}
    for shard in sorted((world_root / "shards").glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            parts = members[key]
            meta = json.loads(parts["json"])
            entry = images.setdefault(meta["image_id"], MiniWorldImage(meta["image_id"], parts["png"], [], []))
            if meta["kind"] == "caption":
                entry.captions.append(parts["txt"].decode())
            else:
                entry.questions.append((meta["question"], meta["answer"]))
    return [images[i] for i in sorted(images)]


YES_NO = ("yes", "no")
DOC_KINDS = ("web page", "question page", "gallery")  # the mini MMC4's kinds of document (write_miniworld_data)
DOC_KIND_WEIGHTS = (2, 1, 1)  # set before any table was rerun on them; see the docstring


def balanced_questions(images: list[MiniWorldImage], labels: dict[str, list[str]], rng: random.Random) -> dict[int, list[tuple[str, str]]]:
    """Every image's questions plus the complements VQA v2 balances with (Goyal et al. 2017): for each yes/no
    question of an image, the same question about another train image whose answer is the other one. A question
    string is then "yes" as often as "no", so the form of a question ("is there a ...?" is mostly "no" in easy-vqa)
    no longer tells the answer; the image has to. Open questions are kept as they are."""
    by_image = {im.image_id: list(im.questions) for im in images}
    ids = [im.image_id for im in images]
    for im in images:
        for q, a in im.questions:
            if a not in YES_NO:
                continue
            flipped = "no" if a == "yes" else "yes"
            for _ in range(100):  # a random image with the other answer: rejection sampling, cheap when it is common
                other = rng.choice(ids)
                if yes_no_answer(q, *labels[str(other)]) == flipped:
                    break
            else:  # rare answers (the mini world needed up to 72 tries): draw among the images that give it
                candidates = [i for i in ids if yes_no_answer(q, *labels[str(i)]) == flipped]
                if not candidates:
                    continue  # no image of the set answers it the other way: the question cannot be balanced
                other = rng.choice(candidates)
            by_image[other].append((q, flipped))
    return by_image


def _question_sentence(question: str, answer: str) -> str:
    """A question about an image as a sentence of the mini MMC4: the world's VQA prompt, ended by a period."""
    return VQA_PROMPT.format(q=question, a=answer) + "."


def _mmc4_document(kind: str, chosen: list[MiniWorldImage], questions: dict[int, list[tuple[str, str]]],
                   filler_sentences: list[str], rng: random.Random) -> tuple[list[str], list[dict]]:
    """(text_list, image_info) of one mini MMC4 document of `kind` (DOC_KINDS) about the `chosen` images."""
    sentences: list[str] = []
    info = []
    for im in chosen:
        if kind == "web page":  # weakly related sentences, the caption, sometimes a question about the image
            for _ in range(rng.randint(0, 2)):
                sentences.append(rng.choice(filler_sentences))
        info.append({"image_name": f"{im.image_id}.png", "matched_text_index": len(sentences), "matched_sim": 1.0})
        if kind == "question page" and questions[im.image_id]:  # a page of Q&A: each image followed by a question about it
            sentences.append(_question_sentence(*rng.choice(questions[im.image_id])))
            continue
        caption = rng.choice(im.captions)
        sentences.append(caption[0].upper() + caption[1:])
        if kind == "web page" and questions[im.image_id] and rng.random() < 0.5:
            sentences.append(_question_sentence(*rng.choice(questions[im.image_id])))
    sentences.append(rng.choice(filler_sentences))
    rng.shuffle(info)  # image_info order is not text order in MMC4 either
    return sentences, info


def write_miniworld_data(world_root: str | Path, out: str | Path, seed: int = 0, docs: int = 800) -> dict[str, str]:
    """Write the mini world's train split in VILA's layouts under `out` (deterministic; test images never enter):

        images/<id>.png             every train image
        mmc4/docs.jsonl             `docs` interleaved documents in the official MMC4 fields, 2-8 images each (more
                                    than six in some, as in MMC4, so the cap matters), of three kinds (DOC_KINDS,
                                    drawn 2:1:1): a web page (each image matched to one of its captions, between
                                    sentences of the text corpus, weakly related text as MMC4's, plus sometimes a
                                    question-answer sentence about the image), a page of questions (each image
                                    followed by "Question: q Answer: a." about it) and a gallery (each image followed
                                    by its caption). The web has pages of both; they are what repeats a task from
                                    image to image as a k-shot prompt does, which a web page alone never does.
        align.json                  LLaVA caption-alignment records (stage 0): <image> -> caption, one per caption
        sft.json                    LLaVA SFT records (stage 2): per image a caption turn and its questions
        text_sft.json               text-only instructions from the corpus' "qa" documents (joint SFT)

    Questions (in the documents and in SFT) are the image's own plus VQA v2's complements (`balanced_questions`).
    The COYO-style pairs are the mini world's own shards (img2dataset layout, kind "caption"). Returns the paths."""
    world_root, out = Path(world_root), Path(out)
    done = out / "DONE"
    paths = {
        "image_root": str(out / "images"),
        "mmc4": str(out / "mmc4" / "docs.jsonl"),
        "align": str(out / "align.json"),
        "sft": str(out / "sft.json"),
        "text_sft": str(out / "text_sft.json"),
    }
    if done.is_file():
        return paths
    from harness.io import atomic_write_bytes, atomic_write_text

    if not (world_root / "DONE").is_file():
        raise FileNotFoundError(f"{world_root} holds no complete mini world (build it with python -m harness.miniworld --root {world_root})")
    rng = random.Random(f"{seed}/vila-miniworld")
    images = _miniworld_images(world_root)
    labels = json.loads((world_root / "miniworld.json").read_text())["labels"]["train"]
    questions = balanced_questions(images, labels, random.Random(f"{seed}/vila-balanced"))
    for im in images:
        path = out / "images" / f"{im.image_id}.png"
        if not path.is_file():
            atomic_write_bytes(path, im.png)
    corpus = {}
    for name in ("shapes", "filler"):
        corpus[name] = [json.loads(l)["text"] for l in (world_root / "text" / f"{name}.jsonl").read_text().splitlines() if l.strip()]
    filler_sentences = [s.strip() + "." for doc in corpus["shapes"] + corpus["filler"] for s in doc.split(".") if s.strip()]

    lines = []
    for d in range(docs):
        kind = rng.choices(DOC_KINDS, weights=DOC_KIND_WEIGHTS)[0]
        sentences, info = _mmc4_document(kind, rng.sample(images, rng.randint(2, 8)), questions, filler_sentences, rng)
        lines.append(json.dumps({"url": f"miniworld://doc/{d}", "text_list": sentences, "image_info": info}))
    atomic_write_text(Path(paths["mmc4"]), "\n".join(lines) + "\n")

    align = [{"id": f"{im.image_id}-{k}", "image": f"{im.image_id}.png",
              "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": c}]}
             for im in images for k, c in enumerate(im.captions)]
    atomic_write_text(Path(paths["align"]), json.dumps(align))

    sft = []
    for im in images:
        turns = [(CAPTION_PROMPT, rng.choice(im.captions))] + [(f"{q}\n{VQA_SUFFIX}", a) for q, a in questions[im.image_id]]
        rng.shuffle(turns)
        turns[0] = (f"{IMAGE_PLACEHOLDER}\n{turns[0][0]}", turns[0][1])  # LLaVA: the image opens the first turn
        conv = [m for u, a in turns for m in ({"from": "human", "value": u}, {"from": "gpt", "value": a})]
        sft.append({"id": str(im.image_id), "image": f"{im.image_id}.png", "conversations": conv})
    atomic_write_text(Path(paths["sft"]), json.dumps(sft))

    text_sft = []
    for k, line in enumerate((world_root / "text" / "qa.jsonl").read_text().splitlines()):
        # one turn per question, the scene in the first
        scene, pairs = qa_document_parts(json.loads(line)["text"])
        if scene and pairs and all(q and a for q, a in pairs):
            turns = [(f"{scene} {q}" if i == 0 else q, a) for i, (q, a) in enumerate(pairs)]
            text_sft.append({"id": f"qa-{k}", "conversations": [
                m for q, a in turns for m in ({"from": "human", "value": f"{q}\n{VQA_SUFFIX}"}, {"from": "gpt", "value": a})]})
    atomic_write_text(Path(paths["text_sft"]), json.dumps(text_sft))
    atomic_write_text(done, json.dumps({"seed": seed, "docs": docs, "images": len(images)}) + "\n")
    return paths
