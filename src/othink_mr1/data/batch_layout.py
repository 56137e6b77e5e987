"""How a processor's batch is laid out, for every family: its image tokens, and which rows of each
tensor belong to which sequence. The one place that knows a family's batch keys.

Image tokens (read off the processor, cached per processor object):

- `vision_tokens`: the processor's image/video markup, as strings; `image_token_id`: the token whose
  positions receive image features.
- `expected_image_tokens`: how many image tokens each sample's images give (Qwen's image grids,
  Idefics3's kept tiles, LLaVA-OneVision's layout, transformers' own per-image count);
  `check_image_tokens` holds a processed batch to it.

Batch layout. Every tensor a processor returns is one of

- per token: the shape of `input_ids` (attention_mask, the Qwen families' mm_token_type_ids, Gemma 3's
  token_type_ids); a completion or reply appended to a sequence grows them all;
- per image: one row per image, in batch order (image_grid_thw, LLaVA-OneVision's image_sizes, the
  pixel_values of LLaVA, LLaVA-OneVision and Gemma 3), except the Qwen families' pixel_values: every
  image's patches stacked flat, t*h*w rows per image;
- per sequence: one row per sample (Idefics3's padded image stacks pixel_values [B, images, C, H, W] and
  their pixel_attention_mask, LLaVA-OneVision's batch_num_images).

`sample_rows` says which rows of a tensor belong to each sample (from its shape and the images per
sample, `image_counts`), and `select_samples` / `repeat_samples` (slice and repeat samples, images
included), `append_completions` / `append_replies` (concatenate tokens after each sequence) and
`model_inputs` apply those rules, so the collators, GRPO's rollouts and prefix sharing hold no list of a
family's keys.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import TYPE_CHECKING, Any, Callable

from .records import DataError, Example, example_label, images_text

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The images' pixels (and Idefics3's mask over them): all a model's vision tower reads, and what makes
# repeating a batch expensive; positions and masks never need them.
PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")


# --------------------------------------------------------------------- cached per processor object

# What is read off a processor is cached per processor object (and chat template, which tests and
# users may swap on a live processor): the collators run per batch and sampling suppression per step.
_CACHE: dict[tuple[str, int, str], tuple[Any, Any]] = {}


def per_processor(kind: str, processor: Any, compute: Callable[[Any], Any]) -> Any:
    """`compute(processor)`, cached per live processor object and chat template under `kind`."""
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


# ------------------------------------------------------------------------------------ image tokens

_VISION_ATTRIBUTE = re.compile(r"image|video|vision|boi|eoi")
_VISION_TEXT = re.compile(r"image|img|video|vision|<row_\d+_col_\d+>", re.IGNORECASE)


def vision_tokens(processor: Any) -> list[str]:
    """The processor's own image and video special tokens, as strings (sorted): every str attribute
    of the processor named like an image/video/vision/boi/eoi `*_token` or `*_tag` (image_token,
    video_token, boi_token, fake_image_token, global_image_tag, ...), plus the tokenizer's special and
    added tokens whose text mentions image, img, video or vision, or looks like Idefics3's
    `<row_1_col_2>`. Text holding any of them would be taken for image markup. Cached per processor."""
    return list(per_processor("vision_tokens", processor, _vision_tokens))


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
    elif per_image is None or not per_processor("helper_agrees", processor, _helper_agrees):
        per_processor("no_count", processor, _no_count)
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

    from .collate import prompt_text  # the prompts' own layout; collate imports this module at load

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
            source = f"{images_text(n)} give{'s' if n == 1 else ''} {want} image features"
        raise DataError(f"{example_label(split, example)}: the prompt holds {have} image tokens but its {source}; does "
                        "the question contain the image token, or does the chat template lack the image slot?")


# ------------------------------------------------------------------------------------ batch layout


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model inputs of a batch: its tensors, the collators' `meta` left out."""
    import torch

    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def image_counts(batch: dict[str, Any]) -> list[int]:
    """Images per sample: the collators' `meta["image_counts"]`; for a batch without it (model inputs
    alone), the runs of image tokens in each row's mm_token_type_ids (image: 1; what the Qwen families'
    rope index pairs the image grids with), else one image per sample."""
    counts = (batch.get("meta") or {}).get("image_counts")
    if counts:
        return list(counts)
    types = batch.get("mm_token_type_ids")
    if types is not None:
        image = types == 1
        starts = image[:, 1:] & ~image[:, :-1]
        return (starts.sum(dim=1) + image[:, 0].long()).tolist()
    return [1] * batch["input_ids"].shape[0]


def per_token_keys(batch: dict[str, Any]) -> list[str]:
    """The per-token tensors of a batch: those shaped like its input_ids (attention_mask, token types)."""
    import torch

    shape = batch["input_ids"].shape
    return [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == shape]


def has_image_grids(batch: dict[str, Any]) -> bool:
    """Whether the batch is laid out the Qwen families' way (image_grid_thw per image, mm_token_type_ids
    per token): all that their 3D (mrope) positions are computed from, so a prompt's positions and cache
    can be shared by completions run on top of it (models/prefix_sharing.py)."""
    return "image_grid_thw" in batch and "mm_token_type_ids" in batch


def sample_rows(key: str, value: torch.Tensor, batch: dict[str, Any], counts: list[int]) -> list[int]:
    """How many leading rows of `value` (the batch's `key`) belong to each sample; `counts`: images per
    sample. Per-sequence and per-token tensors have one row per sample, per-image ones one per image, and
    the Qwen families' pixel_values t*h*w rows per image (its image_grid_thw row)."""
    if key == "pixel_values" and "image_grid_thw" in batch:
        per_image = batch["image_grid_thw"].prod(dim=1).tolist()
    else:
        per_image = [1] * sum(counts)
    rows, start = [], 0
    for count in counts:
        rows.append(int(sum(per_image[start:start + count])))
        start += count
    if value.shape[0] == sum(rows):
        return rows
    if value.shape[0] == len(counts):
        return [1] * len(counts)
    raise ValueError(f"cannot tell which rows of the processor's '{key}' ({tuple(value.shape)}) belong to which of "
                     f"the {len(counts)} prompts ({sum(counts)} images)")


def select_samples(batch: dict[str, Any], samples: list[int], pixels: bool = True) -> dict[str, torch.Tensor]:
    """The model inputs of the given samples of a batch, in that order (one may appear several times),
    each with its images: every tensor's rows of those samples (`sample_rows`). `pixels=False` leaves
    the pixels out (PIXEL_KEYS), for what needs the layout only (positions, masks)."""
    import torch

    counts = image_counts(batch)
    out = {}
    for key, value in model_inputs(batch).items():
        if not pixels and key in PIXEL_KEYS:
            continue
        chunks = torch.split(value, sample_rows(key, value, batch, counts))
        out[key] = torch.cat([chunks[i] for i in samples])
    return out


def repeat_samples(batch: dict[str, Any], times: int, pixels: bool = True) -> dict[str, torch.Tensor]:
    """The model inputs of a batch with each sample (and its images) `times` times in a row: rows
    0..times-1 are sample 0's copies (a prompt's GRPO group)."""
    rows = len(image_counts(batch))
    return select_samples(batch, [i for i in range(rows) for _ in range(times)], pixels)


def append_completions(prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                       completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of prompts followed by their completions (one completion per prompt row): every
    per-token input grows by the completion (attention from the completion mask; token types 0, text);
    the other inputs pass unchanged."""
    import torch

    inputs = dict(prompts)
    for key in per_token_keys(prompts):
        value = prompts[key]
        if key == "input_ids":
            inputs[key] = torch.cat([value, completion_ids], dim=1)
        elif key == "attention_mask":
            inputs[key] = torch.cat([value, completion_mask.to(value.dtype)], dim=1)
        else:
            inputs[key] = torch.cat([value, value.new_zeros(completion_ids.shape)], dim=1)
    return inputs


def append_replies(prompts: dict[str, Any], replies: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Each row's prompt tokens (where its attention mask is 1, whichever side the processor padded),
    then its reply, right-padded. Every per-token tensor is carried along: attention 1 on reply tokens,
    type ids 0 (text); padding holds `pad_id` in input_ids, 0 elsewhere. `reply_mask` (bool) marks the
    reply tokens. Other entries (pixel values, grids) pass unchanged."""
    import torch

    attention = prompts["attention_mask"].bool()
    lengths = attention.sum(dim=1).tolist()
    width = max(n + len(r) for n, r in zip(lengths, replies))
    rows = len(replies)
    out = dict(prompts)
    for key in per_token_keys(prompts):
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
