"""Collators: canonical examples -> model inputs, for any image-text-to-text processor.

One prompt builder serves SFT, GRPO and evaluation, so a task is always asked the same way. Nothing
here branches on a family, by name or by the keys of its batch: what the chat template writes for an
image and what ends an assistant turn are read off the processor itself (its chat template and
tokenizer), and everything that depends on how a family lays out its batch (its image tokens and how
many each image gives, which tensors are per token, per image or per sample) is asked of
data/batch_layout.py, so Qwen2-VL, Idefics3, LLaVA, LLaVA-OneVision and Gemma3 batches are built and
checked by one code path.

Every check names the split and the item and, where it can, runs before the processor: the processor
pairs image slots with images across the whole batch, so one stray slot would shift every later
sample's images (or fail deep inside the model's forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .batch_layout import append_replies, check_image_tokens, image_token_id, per_processor, vision_tokens
from .records import DataError, Example, example_label, images_text

IGNORE_INDEX = -100

# Stand-ins rendered through the chat template to see what it writes around them; odd enough that no
# template writes them itself, and free of characters that image markup or turn markup begins/ends with.
_QUESTION_MARK = "@@question@@"
_REPLY_MARK = "@@reply@@"


# ------------------------------------------------------------------------------------------- prompts


def render_prompt(template: str, question: str) -> str:
    """The user text for one question. `str.replace`, not `format`: templates may hold braces."""
    return template.replace("{question}", question)


def chat_messages(template: str, question: str, num_images: int = 1) -> list[dict[str, Any]]:
    """One user turn: one image part per image, then the prompt (R1-V's layout for one image). No system
    turn of our own: the model's chat template adds its default one, as it did for R1-V."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": render_prompt(template, question)})
    return [{"role": "user", "content": content}]


def prompt_text(processor: Any, template: str, question: str, num_images: int = 1) -> str:
    return processor.apply_chat_template(chat_messages(template, question, num_images), tokenize=False,
                                         add_generation_prompt=True)


# ------------------------------------------------------------------ what the chat template writes

def _render(processor: Any, messages: list[dict[str, Any]], what: str) -> str:
    try:
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # a template that cannot render the probe: say which and why
        raise DataError(f"the chat template of {type(processor).__name__} cannot render {what}: {exc}") from exc


def image_slot(processor: Any) -> str:
    """The text the chat template writes for one image ("" when it writes nothing): one user turn
    rendered with and without an image part, minus what the two renderings share at both ends."""
    return per_processor("image_slot", processor, _image_slot)


def _image_slot(processor: Any) -> str:
    text = {"type": "text", "text": _QUESTION_MARK}
    with_image = _render(processor, [{"role": "user", "content": [{"type": "image"}, text]}], "a user turn with an image")
    without = _render(processor, [{"role": "user", "content": [text]}], "a user turn")
    shortest = min(len(with_image), len(without))
    prefix = 0
    while prefix < shortest and with_image[prefix] == without[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and with_image[-1 - suffix] == without[-1 - suffix]:
        suffix += 1
    return with_image[prefix:len(with_image) - suffix]


def count_slots(text: str, slot: str) -> int:
    return text.count(slot) if slot else 0


@dataclass(frozen=True)
class ReplyEnd:
    """What ends an assistant reply: `text` follows the reply's text in SFT targets, and generation stops at
    its token. `how` is "template" where the chat template closes an assistant turn with a special token
    (Qwen: `<|im_end|>`; Idefics3: `<end_of_utterance>`; Gemma3: `<end_of_turn>`) and "eos appended" where
    it closes nothing (LLaVA-1.5's published template): the tokenizer's end-of-sequence token then ends a
    reply, as LLaVA's own training and TRL's SFT do."""

    text: str
    how: str

    def record(self) -> dict[str, str]:
        return {"ends_with": self.text.strip(), "how": self.how}


def reply_end(processor: Any) -> ReplyEnd:
    """How an assistant reply ends for this processor (see ReplyEnd). Whitespace the template writes
    before its closing token is kept (a template writing "reply </s>" ends replies with " </s>"). A
    DataError names the template when it writes text that is not a special token after a reply, or
    closes nothing and the tokenizer has no eos token. Only SFT asks: evaluation and GRPO never render
    an assistant turn."""
    return per_processor("reply_end", processor, _reply_end)


def _reply_end(processor: Any) -> ReplyEnd:
    user = {"role": "user", "content": [{"type": "text", "text": _QUESTION_MARK}]}
    rendered = ""
    # Content parts are what multimodal templates expect; a few only render plain string content.
    for content in ([{"type": "text", "text": _REPLY_MARK}], _REPLY_MARK):
        rendered = _render(processor, [user, {"role": "assistant", "content": content}], "an assistant turn")
        if _REPLY_MARK in rendered:
            break
    name = type(processor).__name__
    if _REPLY_MARK not in rendered:
        raise DataError(f"the chat template of {name} does not write an assistant message's text: SFT cannot "
                        f"place a reply (rendered: {rendered[-120:]!r})")
    after = rendered[rendered.rindex(_REPLY_MARK) + len(_REPLY_MARK):]
    tokenizer = processor.tokenizer
    if not after.strip():
        if not tokenizer.eos_token:
            raise DataError(f"the chat template of {name} closes nothing after an assistant message and the tokenizer "
                            "has no eos_token (tokenizer_config.json / special_tokens_map.json): SFT cannot tell the "
                            "model where a reply ends")
        return ReplyEnd(tokenizer.eos_token, "eos appended")
    specials = set(tokenizer.all_special_tokens)
    specials |= {str(t.content) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(t, "special", False)}
    body = after.lstrip()
    # The longest match: one special token may begin with another's text.
    end = next((s for s in sorted(specials, key=len, reverse=True) if s and body.startswith(s)), None)
    if end is None:
        raise DataError(f"the chat template of {name} writes {after[:40]!r}, which does not begin with a special "
                        "token, after an assistant message: SFT cannot tell the model where a reply ends (the "
                        "template must close an assistant turn with an end-of-turn special token such as <|im_end|>, "
                        "or with nothing, and the tokenizer's eos is appended)")
    return ReplyEnd(after[:len(after) - len(body)] + end, "template")


# ------------------------------------------------------------------------------------------- checks


def check_prompts(processor: Any, texts: list[str], examples: list[Example], template: str, split: str = "",
                  targets: bool = False) -> None:
    """Before the processor runs, per item: it has images, neither its question (nor the task prompt,
    nor with `targets` its SFT target) holds one of the model's vision tokens, and its rendered
    prompt holds exactly one image slot per image."""
    tokens = vision_tokens(processor)
    slot = image_slot(processor)
    image_token = getattr(processor, "image_token", None)
    for text, example in zip(texts, examples, strict=True):
        where, n = example_label(split, example), len(example.images)
        if n == 0:
            raise DataError(f"{where}: the item has no image")
        sources = [("question", example.question), ("task prompt", template)]
        if targets:
            sources.append(("SFT target", example.target))
        for source, value in sources:
            found = [t for t in tokens if t in value]
            if not found:
                continue
            held = text.count(image_token) if image_token else n
            lead = f"the prompt holds {held} image slots ({image_token}) for its {images_text(n)}: " if held != n else ""
            raise DataError(f"{where}: {lead}the {source} contains the model's vision token(s) {found}, which the "
                            "processor would take for image markup; remove them from the data")
        held = count_slots(text, slot)
        if held != n:
            what = repr(slot) if slot else "none: the chat template writes nothing for an image part"
            raise DataError(f"{where}: the prompt holds {held} image slots ({what}) for its {images_text(n)}; every image "
                            "needs one (does the chat template place one slot per image part?)")


def image_batch(examples: list[Example]) -> list[list[Any]]:
    """The images per sample, nested (what every family's processor accepts; Qwen's flattens them)."""
    return [list(ex.images) for ex in examples]


def _meta(examples: list[Example]) -> dict[str, list]:
    return {
        "questions": [ex.question for ex in examples],
        "answers": [ex.answer for ex in examples],
        "indices": [ex.index for ex in examples],
        # Images per sample: which rows of a per-image tensor belong to which sample
        # (batch_layout.sample_rows), to repeat or select a prompt with its images.
        "image_counts": [len(ex.images) for ex in examples],
        # The images themselves, as loaded: what the vLLM rollout engine processes (models/vllm_engine.py).
        "images": image_batch(examples),
        # Every other field of each record (Example.fields), for rewards that read a column.
        "fields": [dict(ex.fields) for ex in examples],
    }


# ---------------------------------------------------------------------------------------- collators


@dataclass
class PromptCollator:
    """Left-padded prompts for generation, plus what scoring needs (questions, answers, indices),
    the images per sample (`meta["image_counts"]`) and each record's other fields (`meta["fields"]`,
    one dict per prompt: what GRPO's rewards read by column name)."""

    processor: Any
    template: str
    split: str = ""  # named in errors ("counting test")

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question, len(ex.images)) for ex in examples]
        check_prompts(self.processor, texts, examples, self.template, self.split)
        batch = dict(self.processor(text=texts, images=image_batch(examples), return_tensors="pt",
                                    padding=True, padding_side="left"))
        check_image_tokens(self.processor, batch, examples, self.split)
        batch["meta"] = _meta(examples)
        return batch


@dataclass
class SFTCollator:
    """Prompt + target + the reply's end (`reply_end`), right-padded, with labels on the reply tokens only
    (loss_on="assistant") or on every text token (loss_on="all").

    The prompt is the chat template with its generation prompt, processed with its images; the reply
    is `target + reply_end(processor).text` tokenized alone and appended to each row's prompt tokens. So
    the reply's span is known from the prompt's length, whatever markup a family writes (no turn
    marker to search for), and the labels cover exactly the reply."""

    processor: Any
    template: str
    loss_on: str = "assistant"
    split: str = ""  # named in errors ("counting train")

    def __post_init__(self) -> None:
        self.reply_end = reply_end(self.processor)
        tok = self.processor.tokenizer
        # No pad token is rare among chat models; padded positions are masked out whatever they hold.
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.image_token_id = image_token_id(self.processor)

    @property
    def end(self) -> str:
        """The text after each reply's target (the template's closing token, or the eos appended)."""
        return self.reply_end.text

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, self.template, ex.question, len(ex.images)) for ex in examples]
        check_prompts(self.processor, texts, examples, self.template, self.split, targets=True)
        prompts = dict(self.processor(text=texts, images=image_batch(examples), return_tensors="pt",
                                      padding=True, padding_side="right"))
        check_image_tokens(self.processor, prompts, examples, self.split)
        tok = self.processor.tokenizer
        replies = [tok(ex.target + self.end, add_special_tokens=False)["input_ids"] for ex in examples]
        batch = append_replies(prompts, replies, self.pad_id)
        input_ids, reply_mask = batch["input_ids"], batch.pop("reply_mask")
        if self.loss_on == "assistant":
            labels = input_ids.masked_fill(~reply_mask, IGNORE_INDEX)
        else:
            labels = input_ids.masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            if self.image_token_id is not None:
                labels[input_ids == self.image_token_id] = IGNORE_INDEX
        batch["labels"] = labels
        batch["meta"] = _meta(examples)
        return batch
