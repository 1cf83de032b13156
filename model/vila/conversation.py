"""Conversation templates of VILA's released code (llava/conversation.py, tags v1.0 and vila1.5) and the
`<image>` -> id rule (llava/mm_utils.py `tokenizer_image_token`).

    plain             stage 0/1 image-text data (SeparatorStyle.PLAIN): no system prompt, no roles; each user text
                      ends with "\n" (`get_prompt`, so an inference prompt ends "...\n"). Training follows
                      `preprocess_plain` instead: "<image>" + caption + "\n" (`data.conversation_segments`).
    vicuna_v1         "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." (SeparatorStyle.TWO; LLaVA-1.5's chat)
    vicuna_v1_nosys   the same with an empty system prompt: the prompt starts with the separator, " USER: ..."
    llama_2           "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]"
                      (SeparatorStyle.LLAMA_2) with Llama-2's own system prompt
    llava_llama_2     the same with LLaVA's system prompt
    hermes-2          (vila1.5) SeparatorStyle.MPT: "<|im_start|>system\nAnswer the questions.<|im_end|>"
                      "<|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n{a}<|im_end|>..."
    llama_3           (vila1.5) SeparatorStyle.LLAMA_3: "<|begin_of_text|>...system...<|end_of_text|>"
                      "<|start_header_id|>user<|end_header_id|>\n\n{q}<|end_of_text|>" then the answer after the
                      release's second role, which is (sic) "<|start_header_id|>system<|end_header_id|>\n\n"

A conversation is a list of (user, assistant) turns; an assistant text of None leaves the prompt open for the model
to continue (generation), as the release's `append_message(roles[1], None)`. Images are `<image>` placeholders
inside the user texts (VILA has no image start/end tokens); `tokenize_with_images` turns each into one
`image_token_index` id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# conv_llava_llama_2's system prompt (llava/conversation.py)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
LLAMA_2_SYSTEM = LLAVA_LLAMA_2_SYSTEM  # the name this module used for it before; the template is llava_llama_2
# conv_llama_2's system prompt: Llama-2-chat's own (llava/conversation.py; two spaces after "safe." as released)
LLAMA_2_CHAT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
HERMES_2_SYSTEM = "<|im_start|>system\nAnswer the questions."
LLAMA_3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language."
)

Turns = list[tuple[str, str | None]]


@dataclass(frozen=True)
class Conversation:
    name: str
    style: str  # the release's SeparatorStyle: "plain" | "two" | "llama_2" | "mpt" | "llama_3"
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "  # after the system prompt and after a user turn (two); between turns (mpt, llama_3)
    sep2: str = "</s>"  # after an assistant turn (two, llama_2)

    def prompt(self, turns: Turns) -> str:
        """The text of `turns`, as the release's `Conversation.get_prompt` writes it; a final assistant None ends
        the text where the model's answer starts."""
        for i, (_, answer) in enumerate(turns):
            if answer is None and i != len(turns) - 1:
                raise ValueError(f"turn {i} has no assistant text; only the last turn may be open")
        messages = [m for user, answer in turns for m in (user, answer)]
        if self.style == "plain":
            # Open turn: get_prompt's user text + sep ("\n"). A turn with its answer: preprocess_plain's
            # user + answer + sep (get_prompt never renders one: the plain template's sep2 is None).
            return "".join(user + (self.sep if answer is None else answer + self.sep) for user, answer in turns)
        if self.style == "two":
            text = self.system + self.sep  # also with an empty system prompt: vicuna_v1_nosys starts with " "
            for i, m in enumerate(messages):
                role = self.roles[i % 2]
                text += f"{role}: {m}{self.sep if i % 2 == 0 else self.sep2}" if m else f"{role}:"
            return text
        if self.style == "llama_2":
            text = ""
            for i, m in enumerate(messages):
                if not m:
                    continue
                if i == 0:
                    m = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{m}"
                if i % 2 == 0:
                    text += ("" if i == 0 else self.sep) + f"[INST] {m} [/INST]"  # the release lstrips sep once
                else:
                    text += f" {m} {self.sep2}"
            return text
        if self.style in ("mpt", "llama_3"):
            text = self.system + self.sep
            for i, m in enumerate(messages):
                text += self.roles[i % 2] + (m + self.sep if m else "")
            return text
        raise ValueError(f"conversation {self.name!r}: unknown style {self.style!r}")


TEMPLATES: dict[str, Conversation] = {
    # conv_llava_plain: sep "\n"; the "\n" after a caption is preprocess_plain's (default_conversation.sep)
    "plain": Conversation("plain", "plain", roles=("", ""), sep="\n", sep2=""),
    "vicuna_v1": Conversation("vicuna_v1", "two", system=VICUNA_SYSTEM),
    "vicuna_v1_nosys": Conversation("vicuna_v1_nosys", "two", system=""),
    "llama_2": Conversation("llama_2", "llama_2", system=LLAMA_2_CHAT_SYSTEM, sep="<s>", sep2="</s>"),
    "llava_llama_2": Conversation("llava_llama_2", "llama_2", system=LLAVA_LLAMA_2_SYSTEM, sep="<s>", sep2="</s>"),
    "hermes-2": Conversation("hermes-2", "mpt", system=HERMES_2_SYSTEM,
                             roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), sep="<|im_end|>", sep2=""),
    "llama_3": Conversation("llama_3", "llama_3", system=LLAMA_3_SYSTEM,
                            roles=("<|start_header_id|>user<|end_header_id|>\n\n",
                                   "<|start_header_id|>system<|end_header_id|>\n\n"),
                            sep="<|end_of_text|>", sep2=""),
}  # fmt: skip


def get_template(name: str) -> Conversation:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its `<s>` first by itself (`tokenizer("")` starts with it): LLaMA-2's and
    Llama-3's do; Yi's (VILA1.5-40B's hermes-2 LLM, `add_bos_token: false`) does not. The release's
    `tokenizer_image_token` keeps a `<s>` only when the tokenizer put one there."""
    return tokenizer.bos_token_id is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]


def tokenize_with_images(text: str, tokenizer: Any, image_token_index: int, add_bos: bool = True) -> list[int]:
    """Token ids of `text` with one `image_token_index` per "<image>" (llava/mm_utils.py `tokenizer_image_token`):
    each stretch between placeholders is tokenized on its own (no special tokens: with a non-legacy LLaMA
    tokenizer each stretch starts with its own "▁", as in the release), and `<s>` is put first when `add_bos` and
    the tokenizer adds one (the release keeps the first stretch's `<s>` only if it is there)."""
    ids: list[int] = []
    if add_bos and adds_bos(tokenizer):
        ids.append(tokenizer.bos_token_id)
    pieces = text.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if i < len(pieces) - 1:
            ids.append(image_token_index)
    return ids
