"""Collators: canonical examples -> model inputs, for any image-text-to-text processor.

One prompt builder serves SFT, GRPO and evaluation, so a task is always asked the same way. Nothing
here branches on a family name: what the chat template writes for an image, what ends an assistant turn
and which tokens are image markup are read off the processor itself (its chat template, attributes
and tokenizer), so Qwen2-VL, Idefics3, LLaVA and Gemma3 batches are built and checked by one code path.

Every check names the split and the item and, where it can, runs before the processor: the processor
pairs image slots with images across the whole batch, so one stray slot would shift every later
sample's images (or fail deep inside the model's forward pass).
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from .records import DataError, Example

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------- what the processor says about images

# What is read off a processor is cached per processor object (and chat template, which tests and
# users may swap on a live processor): the collators run per batch and sampling suppression per step.
_CACHE: dict[tuple[str, int, str], tuple[Any, Any]] = {}


def _per_processor(kind: str, processor: Any, compute: Callable[[Any], Any]) -> Any:
    key = (kind, id(processor), str(getattr(processor, "chat_template", None)))
    hit = _CACHE.get(key)
    # The weak reference tells a live processor from a dead one whose id was reused.
    if hit is not None and hit[0]() is processor:
        return hit[1]
    value = compute(processor)
    try:
        ref = weakref.ref(processor)
    except TypeError:  # not weak-referenceable: compute every time rather than risk a stale answer
        return value
    for stale in [k for k, (r, _) in _CACHE.items() if r() is None]:
        del _CACHE[stale]
    _CACHE[key] = (ref, value)
    return value


_VISION_ATTRIBUTE = re.compile(r"image|video|vision|boi|eoi")
_VISION_TEXT = re.compile(r"image|img|video|vision|<row_\d+_col_\d+>", re.IGNORECASE)


def vision_tokens(processor: Any) -> list[str]:
    """The processor's own image and video special tokens, as strings (sorted): every str attribute
    of the processor named like an image/video/vision/boi/eoi `*_token` or `*_tag` (image_token,
    video_token, boi_token, fake_image_token, global_image_tag, ...), plus the tokenizer's special and
    added tokens whose text mentions image, img, video or vision, or looks like Idefics3's
    `<row_1_col_2>`. Text holding any of them would be taken for image markup. Cached per processor."""
    return list(_per_processor("vision_tokens", processor, _vision_tokens))


def _vision_tokens(processor: Any) -> tuple[str, ...]:
    found: set[str] = set()
    for name in dir(processor):
        if name.endswith(("_token", "_tag")) and _VISION_ATTRIBUTE.search(name):
            try:
                value = getattr(processor, name)
            except Exception:  # a property that cannot be computed on this processor: not a token
                continue
            if isinstance(value, str) and value:
                found.add(value)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        texts = set(getattr(tokenizer, "all_special_tokens", []))
        texts |= {str(getattr(t, "content", t)) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        found |= {t for t in texts if _VISION_TEXT.search(t)}
    return tuple(sorted(found))


def image_token_id(processor: Any) -> int | None:
    """The id of the model's image token, the one whose positions receive image features (None when
    the processor has none): transformers' own list of a processor's image-token ids when it names
    exactly one (`image_token_ids`; Gemma3's `image_token_id` is its begin-of-image marker, while its
    features go to `<image_soft_token>`, which this list names), else `processor.image_token_id`, else
    the tokenizer's id of `processor.image_token`."""
    listed = getattr(processor, "image_token_ids", None)
    if isinstance(listed, (list, tuple)) and len(listed) == 1 and isinstance(listed[0], int):
        return listed[0]
    token_id = getattr(processor, "image_token_id", None)
    if isinstance(token_id, int):
        return token_id
    token = getattr(processor, "image_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if token and tokenizer is not None:
        token_id = tokenizer.convert_tokens_to_ids(token)
        return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None
    return None


def _render(processor: Any, messages: list[dict[str, Any]], what: str) -> str:
    try:
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # a template that cannot render the probe: say which and why
        raise DataError(f"the chat template of {type(processor).__name__} cannot render {what}: {exc}") from exc


def image_slot(processor: Any) -> str:
    """The text the chat template writes for one image ("" when it writes nothing): one user turn
    rendered with and without an image part, minus what the two renderings share at both ends."""
    return _per_processor("image_slot", processor, _image_slot)


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
    return _per_processor("reply_end", processor, _reply_end)


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


def _where(split: str, example: Example) -> str:
    return f"{split} item {example.index}".strip()


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def check_prompts(processor: Any, texts: list[str], examples: list[Example], template: str, split: str = "",
                  targets: bool = False) -> None:
    """Before the processor runs, per item: it has images, neither its question (nor the task prompt,
    nor with `targets` its SFT target) holds one of the model's vision tokens, and its rendered
    prompt holds exactly one image slot per image."""
    tokens = vision_tokens(processor)
    slot = image_slot(processor)
    image_token = getattr(processor, "image_token", None)
    for text, example in zip(texts, examples, strict=True):
        where, n = _where(split, example), len(example.images)
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
            lead = f"the prompt holds {held} image slots ({image_token}) for its {_images(n)}: " if held != n else ""
            raise DataError(f"{where}: {lead}the {source} contains the model's vision token(s) {found}, which the "
                            "processor would take for image markup; remove them from the data")
        held = count_slots(text, slot)
        if held != n:
            what = repr(slot) if slot else "none: the chat template writes nothing for an image part"
            raise DataError(f"{where}: the prompt holds {held} image slots ({what}) for its {_images(n)}; every image "
                            "needs one (does the chat template place one slot per image part?)")


def expected_image_tokens(processor: Any, batch: dict[str, Any], image_counts: list[int],
                          image_sizes: list[tuple[int, int]]) -> list[int] | None:
    """How many image tokens each sample's prompt must hold after processing, counted from what the
    processor returned for the images (not from the text it expanded), or None when nothing gives a
    count. `image_counts`: images per sample; `image_sizes`: (height, width) of every image, in batch
    order.

    - Qwen2/2.5/3-VL (`image_grid_thw`, one row per image): t*h*w / merge^2 per image.
    - Idefics3 / SmolVLM (`pixel_attention_mask` and `processor.image_seq_len`): image_seq_len tokens
      per tile the model keeps (tiles whose pixels are not all zero: the model's own rule for padding).
    - LLaVA-OneVision (`batch_num_images`): a lone image is counted by transformers' helper (below); in
      a sample with several images each image gets its base grid plus a newline token (no any-res).
    - Any other processor: transformers' own per-image count, `_get_num_multimodal_tokens`, where it
      agrees with the processor's output on a two-image probe (`_helper_agrees`; LLaVA and Gemma 3 do).
    Where none applies the check is skipped, and said once in the log (`_no_count`)."""
    import torch

    grid = batch.get("image_grid_thw")
    if grid is not None:
        merge = int(getattr(processor.image_processor, "merge_size", 2))
        features = torch.div(grid.prod(dim=1), merge * merge, rounding_mode="floor")
        return [int(f.sum()) for f in torch.split(features, image_counts)]
    pixels = batch.get("pixel_values")
    if "pixel_attention_mask" in batch and getattr(processor, "image_seq_len", None) and pixels is not None:
        kept = (pixels != 0).flatten(2).any(dim=2).sum(dim=1)
        return [int(n) * int(processor.image_seq_len) for n in kept]
    per_image = _helper_counts(processor, image_sizes)
    if "batch_num_images" in batch and per_image is not None and getattr(processor, "num_image_tokens", None):
        several = int(processor.num_image_tokens) + 1 - (processor.vision_feature_select_strategy == "default")
        per_image = _onevision_counts(image_counts, per_image, several)
    elif per_image is None or not _per_processor("helper_agrees", processor, _helper_agrees):
        _per_processor("no_count", processor, _no_count)
        return None
    out, start = [], 0
    for count in image_counts:
        out.append(sum(per_image[start:start + count]))
        start += count
    return out


def _onevision_counts(image_counts: list[int], lone: list[int], several: int) -> list[int]:
    """Per-image token counts of LLaVA-OneVision: `lone[i]` for an image alone in its sample, `several`
    for each image of a sample with more than one."""
    out, start = [], 0
    for count in image_counts:
        out += lone[start:start + count] if count == 1 else [several] * count
        start += count
    return out


def _no_count(processor: Any) -> bool:
    log.warning("%s: no way to count the image tokens each image should get; the per-sample image-token check "
                "is skipped for this processor (image slots are still checked before processing)",
                type(processor).__name__)
    return True


def _helper_counts(processor: Any, image_sizes: list[tuple[int, int]]) -> list[int] | None:
    try:
        per_image = processor._get_num_multimodal_tokens(image_sizes=image_sizes)["num_image_tokens"]
    except Exception:  # no helper for this family, or one that needs other arguments: no way to know
        return None
    if per_image is None or len(per_image) != len(image_sizes):
        return None
    return [int(n) for n in per_image]


# Two images of different shapes in one sample: a helper that ignores how a family lays out several
# images, or counts tokens other than the image token, disagrees here.
_PROBE_SIZES = ((112, 112), (84, 140))


def _helper_agrees(processor: Any) -> bool:
    """Whether `_helper_counts` gives what the processor actually writes, on one probe sample."""
    from PIL import Image

    token_id = image_token_id(processor)
    expected = _helper_counts(processor, list(_PROBE_SIZES))
    if token_id is None or expected is None:
        return False
    try:
        images = [Image.new("RGB", (width, height), (128, 128, 128)) for height, width in _PROBE_SIZES]
        text = prompt_text(processor, "{question}", "How many?", len(images))
        probe = processor(text=[text], images=[images], return_tensors="pt")
    except Exception:  # a processor that cannot take the probe: trust nothing
        return False
    return int((probe["input_ids"] == token_id).sum()) == sum(expected)


def check_image_tokens(processor: Any, batch: dict[str, Any], examples: list[Example], split: str = "") -> None:
    """Each sample's image placeholder tokens must number exactly the features its images give
    (`expected_image_tokens`): otherwise the model fails deep inside its forward pass, or silently
    pairs features with the wrong positions. Causes: a question that itself contains the image token,
    a chat template without the image slot, a processor of another model."""
    token_id = image_token_id(processor)
    if token_id is None:
        return
    counts = [len(ex.images) for ex in examples]
    grid = batch.get("image_grid_thw")
    if grid is not None and grid.shape[0] != sum(counts):
        raise DataError(f"{split} items {[ex.index for ex in examples][:8]}: expected one image grid per image "
                        f"({sum(counts)}), the processor returned {grid.shape[0]}".strip())
    sizes = [(im.height, im.width) for ex in examples for im in ex.images]
    expected = expected_image_tokens(processor, batch, counts, sizes)
    if expected is None:
        return
    tokens = (batch["input_ids"] == token_id).sum(dim=1).tolist()
    start = 0
    for example, have, want, n in zip(examples, tokens, expected, counts, strict=True):
        grids = grid[start:start + n].tolist() if grid is not None else None
        start += n
        if have == want:
            continue
        if grids is not None:
            merge = int(getattr(processor.image_processor, "merge_size", 2))
            shapes = " + ".join(f"{t}x{h}x{w}" for t, h, w in grids)
            source = f"{shapes} patch grid{' gives' if n == 1 else 's give'} {want} image features (merge {merge}x{merge})"
        else:
            source = f"{_images(n)} give{'s' if n == 1 else ''} {want} image features"
        raise DataError(f"{_where(split, example)}: the prompt holds {have} image tokens but its {source}; does the "
                        "question contain the image token, or does the chat template lack the image slot?")


def image_batch(examples: list[Example]) -> list[list[Any]]:
    """The images per sample, nested (what every family's processor accepts; Qwen's flattens them)."""
    return [list(ex.images) for ex in examples]


def _meta(examples: list[Example]) -> dict[str, list]:
    return {
        "questions": [ex.question for ex in examples],
        "answers": [ex.answer for ex in examples],
        "indices": [ex.index for ex in examples],
        # Images per sample: a family with one image-feature row per image (Qwen's image_grid_thw)
        # needs it to repeat a prompt's images with the prompt.
        "image_counts": [len(ex.images) for ex in examples],
    }


# ---------------------------------------------------------------------------------------- collators


@dataclass
class PromptCollator:
    """Left-padded prompts for generation, plus what scoring needs (questions, answers, indices)
    and the images per sample (`meta["image_counts"]`)."""

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


def append_replies(prompts: dict[str, Any], replies: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Each row's prompt tokens (where its attention mask is 1, whichever side the processor padded),
    then its reply, right-padded. Every per-token tensor the processor returned (the shape of
    input_ids: attention_mask, mm_token_type_ids, Gemma3's token_type_ids) is carried along:
    attention 1 on reply tokens, type ids 0 (text); padding holds `pad_id` in input_ids, 0 elsewhere.
    `reply_mask` (bool) marks the reply tokens. Other entries (pixel values, grids) pass unchanged."""
    import torch

    input_ids, attention = prompts["input_ids"], prompts["attention_mask"].bool()
    per_token = [k for k, v in prompts.items() if torch.is_tensor(v) and v.shape == input_ids.shape]
    lengths = attention.sum(dim=1).tolist()
    width = max(n + len(r) for n, r in zip(lengths, replies))
    rows = len(replies)
    out = dict(prompts)
    for key in per_token:
        old = prompts[key]
        new = torch.full((rows, width), pad_id if key == "input_ids" else 0, dtype=old.dtype)
        for row, (n, reply) in enumerate(zip(lengths, replies)):
            new[row, :n] = old[row][attention[row]]
            if key == "input_ids":
                new[row, n:n + len(reply)] = torch.tensor(reply, dtype=old.dtype)
            elif key == "attention_mask":
                new[row, n:n + len(reply)] = 1
        out[key] = new
    reply_mask = torch.zeros((rows, width), dtype=torch.bool)
    for row, (n, reply) in enumerate(zip(lengths, replies)):
        reply_mask[row, n:n + len(reply)] = True
    out["reply_mask"] = reply_mask
    return out
