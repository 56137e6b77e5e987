"""Checks that need the loaded model and data, run after loading and before the first step (and
before the row-zero evaluation). Each one fails with a message that names what disagrees.

1. The image budget (min/max pixels), the patch geometry and the chat template are the same for
   training and for every evaluation split, and match `model.*` and the model's vision config.
2. The first training micro-batch and the first batch of every evaluation split collate, which
   checks that each sample's image tokens match the features its image grid gives (the collators
   check this on every batch; here it happens before any time is spent).
3. For SFT, the token that ends a reply stops generation.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import torch

from .utils.errors import ConfigError


class PreflightError(ConfigError):
    """The model, processor and data disagree; found before training."""


def processor_settings(processor: Any) -> dict[str, Any]:
    """What decides how an image and a prompt become tokens: every image processor setting, the
    processor's own settings (Idefics3's image_seq_len, ...) and the chat template."""
    from .models.processing import constructor_settings, has_pixel_budget

    ip = processor.image_processor
    size = dict(getattr(ip, "size", None) or {})
    template = getattr(processor, "chat_template", None) or ""
    settings = {f"image_processor.{k}": v for k, v in sorted(ip.to_dict().items()) if k != "image_processor_type"}
    settings.update({f"processor.{k}": v for k, v in sorted(constructor_settings(processor).items())})
    budget = has_pixel_budget(ip)
    return {
        "min_pixels": size.get("shortest_edge") if budget else None,
        "max_pixels": size.get("longest_edge") if budget else None,
        "patch_size": getattr(ip, "patch_size", None),
        "merge_size": getattr(ip, "merge_size", None),
        "temporal_patch_size": getattr(ip, "temporal_patch_size", None),
        "chat_template": hashlib.sha256(template.encode()).hexdigest()[:12] if template else None,
        **settings,
    }


def check_processors(model_cfg: Any, model: torch.nn.Module, train_processor: Any, eval_processors: dict[str, Any]) -> None:
    reference = processor_settings(train_processor)
    for key in ("min_pixels", "max_pixels"):
        if model_cfg[key] is not None and reference[key] != model_cfg[key]:
            raise PreflightError(f"preflight: model.{key}={model_cfg[key]} but the processor uses {key}={reference[key]}")
    vision = getattr(model.config, "vision_config", None)
    if vision is not None and reference["merge_size"] is not None:  # the Qwen families' patch geometry
        expected = {"patch_size": getattr(vision, "patch_size", None),
                    "merge_size": getattr(vision, "spatial_merge_size", None),
                    "temporal_patch_size": getattr(vision, "temporal_patch_size", None)}
        for key, value in expected.items():
            if value is not None and reference[key] is not None and reference[key] != value:
                raise PreflightError(f"preflight: the processor's {key}={reference[key]} but the model's vision config has "
                                     f"{value}: processor and weights come from different models")
    for name, processor in eval_processors.items():
        settings = processor_settings(processor)
        keys = list(dict.fromkeys([*reference, *settings]))
        differences = [f"{k}={settings.get(k)!r} (training: {reference.get(k)!r})" for k in keys
                       if settings.get(k) != reference.get(k)]
        if differences:
            raise PreflightError(f"preflight: evaluation on '{name}' would use {', '.join(differences)}; training and "
                                 "evaluation must turn images and prompts into tokens the same way")


def check_reply_end(model: torch.nn.Module, collator: Any) -> None:
    """SFT teaches a reply to end with `collator.reply_end` (the token that closes an assistant turn in the
    chat template, or the tokenizer's eos where it closes nothing): that token must stop generation, or a
    fine-tuned model would never stop in evaluation and GRPO."""
    from .evaluation.harness import stop_token_ids

    tokenizer = collator.processor.tokenizer
    end = collator.reply_end.text.strip()
    end_id = tokenizer.convert_tokens_to_ids(end)
    stops = stop_token_ids(model, tokenizer)
    if end_id not in stops:
        raise PreflightError(f"preflight: SFT ends a reply with {end} (id {end_id}; {collator.reply_end.how}), which is "
                             f"not a stop token of the model (generation_config.eos_token_id and the tokenizer's eos: "
                             f"{tokenizer.convert_ids_to_tokens(stops)}); set the model's generation_config.eos_token_id "
                             "to include it")


def first_batch(loader: Any, size: int) -> list[Any]:
    """The examples of the loader's first batch (in its sampler's order), without consuming it."""
    indices = list(itertools.islice(iter(loader.sampler), size)) if loader.sampler is not None else range(size)
    return [loader.dataset[i] for i in indices]


def preflight(model_cfg: Any, model: torch.nn.Module, train_loader: Any | None, eval_loaders: dict[str, Any]) -> None:
    loaders = ({"train": train_loader} if train_loader is not None else {}) | eval_loaders
    processors = {name: loader.collate_fn.processor for name, loader in loaders.items()}
    train_processor = processors.pop("train", None) or next(iter(processors.values()))
    check_processors(model_cfg, model, train_processor, processors)
    if train_loader is not None and hasattr(train_loader.collate_fn, "reply_end"):  # SFT: replies are trained
        check_reply_end(model, train_loader.collate_fn)
    for loader in loaders.values():
        examples = first_batch(loader, loader.batch_size or 1)
        if examples:
            loader.collate_fn(examples)  # raises DataError naming the split and item
