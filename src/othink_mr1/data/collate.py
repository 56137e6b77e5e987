"""Collators: canonical examples -> model inputs.

One prompt builder serves SFT, GRPO and evaluation, so a task is always asked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import DataError, Example

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


def check_image_placeholders(processor: Any, texts: list[str], examples: list[Example], split: str = "") -> None:
    """One image slot per prompt text, before the processor expands them (it pairs slots with images
    across the whole batch, so one stray slot shifts every later sample's image or crashes)."""
    placeholder = getattr(processor, "image_token", "<|image_pad|>")
    for text, example in zip(texts, examples):
        count = text.count(placeholder)
        if count != 1:
            raise DataError(f"{split} item {example.index}: the prompt holds {count} image slots ({placeholder}) for its "
                            "1 image; does the question contain the image token, or does the chat template lack the "
                            "image slot?")


def check_image_tokens(processor: Any, batch: dict[str, Any], examples: list[Example], split: str = "") -> None:
    """Each sample's image placeholder tokens must number exactly the features its image grid gives
    (t*h*w / merge^2): otherwise the model fails deep inside its forward pass, or silently pairs
    features with the wrong positions. Causes: a question that itself contains the image token, a
    chat template without the image slot, a processor of another model."""
    import torch

    tok = processor.tokenizer
    image_token_id = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<|image_pad|>"))
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    grid = batch.get("image_grid_thw")
    if grid is None or grid.shape[0] != len(examples):
        raise DataError(f"{split} items {[ex.index for ex in examples][:8]}: expected one image per sample, the processor "
                        f"returned {0 if grid is None else grid.shape[0]} image grids for {len(examples)} samples")
    tokens = (batch["input_ids"] == image_token_id).sum(dim=1)
    features = torch.div(grid.prod(dim=1), merge * merge, rounding_mode="floor")
    for row in (tokens != features).nonzero().flatten().tolist():
        t, h, w = grid[row].tolist()
        raise DataError(f"{split} item {examples[row].index}: the prompt holds {int(tokens[row])} image "
                        f"tokens but its {t}x{h}x{w} patch grid gives {int(features[row])} image features "
                        f"(merge {merge}x{merge}); does the question contain the image token, or does the chat "
                        "template lack the image slot?")


@dataclass
class PromptCollator:
    """Left-padded prompts for generation, plus what scoring needs (questions, answers, indices)."""

    processor: Any
    template: str
    split: str = ""  # named in errors ("counting test")

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question) for ex in examples]
        check_image_placeholders(self.processor, texts, examples, self.split)
        batch = self.processor(text=texts, images=[ex.image for ex in examples], return_tensors="pt",
                               padding=True, padding_side="left")
        batch = dict(batch)
        check_image_tokens(self.processor, batch, examples, self.split)
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
    split: str = ""  # named in errors ("counting train")

    def __post_init__(self) -> None:
        tok = self.processor.tokenizer
        self.im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
        # "<|im_start|>assistant\n" opens the reply; its length in tokens is fixed.
        self.header_len = 1 + len(tok("assistant\n", add_special_tokens=False)["input_ids"])
        self.image_token_id = tok.convert_tokens_to_ids(getattr(self.processor, "image_token", "<|image_pad|>"))
        self.eos = tok.eos_token

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question) + ex.target + self.eos for ex in examples]
        check_image_placeholders(self.processor, texts, examples, self.split)
        batch = dict(self.processor(text=texts, images=[ex.image for ex in examples], return_tensors="pt",
                                    padding=True, padding_side="right"))
        check_image_tokens(self.processor, batch, examples, self.split)
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
