"""Collators: canonical examples -> model inputs.

One prompt builder serves SFT, GRPO and evaluation, so a task is always asked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import Example

IGNORE_INDEX = -100


def render_prompt(template: str, question: str) -> str:
    """The user text for one question. `str.replace`, not `format`: templates may hold braces."""
    return template.replace("{question}", question)


def chat_messages(template: str, question: str) -> list[dict[str, Any]]:
    """One user turn, the image first, then the prompt (R1-V's layout). No system turn of our own:
    the model's chat template adds its default one, as it did for R1-V."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": render_prompt(template, question)}]}]


def prompt_text(processor: Any, template: str, question: str) -> str:
    return processor.apply_chat_template(chat_messages(template, question), tokenize=False, add_generation_prompt=True)


@dataclass
class PromptCollator:
    """Left-padded prompts for generation, plus what scoring needs (questions, answers, indices)."""

    processor: Any
    template: str

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question) for ex in examples]
        batch = self.processor(text=texts, images=[ex.image for ex in examples], return_tensors="pt",
                               padding=True, padding_side="left")
        batch = dict(batch)
        batch["meta"] = {
            "questions": [ex.question for ex in examples],
            "answers": [ex.answer for ex in examples],
            "indices": [ex.index for ex in examples],
        }
        return batch


@dataclass
class SFTCollator:
    """Prompt + target + end-of-turn, right-padded, with labels on the assistant tokens only
    (loss_on="assistant") or on every text token (loss_on="all")."""

    processor: Any
    template: str
    loss_on: str = "assistant"

    def __post_init__(self) -> None:
        tok = self.processor.tokenizer
        self.im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
        # "<|im_start|>assistant\n" opens the reply; its length in tokens is fixed.
        self.header_len = 1 + len(tok("assistant\n", add_special_tokens=False)["input_ids"])
        self.image_token_id = tok.convert_tokens_to_ids(getattr(self.processor, "image_token", "<|image_pad|>"))
        self.eos = tok.eos_token

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question) + ex.target + self.eos for ex in examples]
        batch = dict(self.processor(text=texts, images=[ex.image for ex in examples], return_tensors="pt",
                                    padding=True, padding_side="right"))
        input_ids = batch["input_ids"]
        labels = input_ids.clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        labels[input_ids == self.image_token_id] = IGNORE_INDEX
        if self.loss_on == "assistant":
            for row in range(input_ids.shape[0]):
                starts = (input_ids[row] == self.im_start_id).nonzero()
                reply_start = int(starts[-1]) + self.header_len
                labels[row, :reply_start] = IGNORE_INDEX
        batch["labels"] = labels
        return batch
