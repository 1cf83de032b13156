"""Conversation templates of VILA's released code (LLaVA's, as VILA uses them) and the `<image>` -> id rule.

    plain             stage 0/1 image-text data: the turns concatenated, an assistant turn ends with "\\n"
                      ("<image>" + caption + "\\n"), no system prompt, no roles
    vicuna_v1         "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." (LLaVA-1.5's chat format)
    vicuna_v1_nosys   the same without the system prompt
    llama_2           "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]"

A conversation is a list of (user, assistant) turns; an assistant text of None leaves the prompt open for the model
to continue (generation). Images are `<image>` placeholders inside the user texts (VILA has no image start/end
tokens); `tokenize_with_images` turns each into one `image_token_index` id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

Turns = list[tuple[str, str | None]]


@dataclass(frozen=True)
class Conversation:
    name: str
    style: str  # "plain" | "two" (vicuna) | "llama_2"
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "  # after the system prompt and after a user turn
    sep2: str = "</s>"  # after an assistant turn

    def prompt(self, turns: Turns) -> str:
        """The text of `turns`; a final assistant None ends the text where the model's answer starts."""
        for i, (_, answer) in enumerate(turns):
            if answer is None and i != len(turns) - 1:
                raise ValueError(f"turn {i} has no assistant text; only the last turn may be open")
        if self.style == "plain":
            return "".join(user + ("" if answer is None else answer + self.sep) for user, answer in turns)
        if self.style == "two":
            text = self.system + self.sep if self.system else ""
            for user, answer in turns:
                text += f"{self.roles[0]}: {user}{self.sep}{self.roles[1]}:"
                text += "" if answer is None else f" {answer}{self.sep2}"
            return text
        if self.style == "llama_2":
            text = ""
            for i, (user, answer) in enumerate(turns):
                if i == 0 and self.system:
                    user = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{user}"
                text += ("" if i == 0 else self.sep) + f"[INST] {user} [/INST]"
                text += "" if answer is None else f" {answer} {self.sep2}"
            return text
        raise ValueError(f"conversation {self.name!r}: unknown style {self.style!r}")


TEMPLATES: dict[str, Conversation] = {
    "plain": Conversation("plain", "plain", roles=("", ""), sep="\n", sep2="\n"),
    "vicuna_v1": Conversation("vicuna_v1", "two", system=VICUNA_SYSTEM),
    "vicuna_v1_nosys": Conversation("vicuna_v1_nosys", "two", system=""),
    "llama_2": Conversation("llama_2", "llama_2", system=LLAMA_2_SYSTEM, sep="<s>", sep2="</s>"),
}


def get_template(name: str) -> Conversation:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def tokenize_with_images(text: str, tokenizer: Any, image_token_index: int, add_bos: bool = True) -> list[int]:
    """Token ids of `text` with one `image_token_index` per "<image>"; the pieces between placeholders are encoded
    separately (no special tokens) and `<s>` is put first when `add_bos` (LLaMA's rule)."""
    ids: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    pieces = text.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if i < len(pieces) - 1:
            ids.append(image_token_index)
    return ids
