"""What a run trains: LoRA adapters through peft (`model.lora.*`) or the full model with parts frozen
(`model.freeze.*`), for Qwen2-VL-style models (`model.visual.{blocks,patch_embed,merger}`,
`model.language_model`, `lm_head`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .factory import ModelError

VISION_LINEARS = ("qkv", "proj", "fc1", "fc2")
# Parameter-name patterns of each freezable part (names of the unwrapped transformers model).
PARTS = {
    "vision_tower": re.compile(r"(^|\.)visual\.(?!merger\.)"),
    "merger": re.compile(r"(^|\.)visual\.merger\."),
    "language_model": re.compile(r"(^|\.)(language_model\.|lm_head\.)"),
}


def lora_target_regex(lora_cfg: Any) -> str:
    """peft's target_modules as one regex (matched against full module names): the language model's
    listed linears, and with `vision_tower` the ViT blocks' attention and MLP linears."""
    if not lora_cfg.target_modules:
        raise ModelError("model.lora.target_modules is empty: LoRA needs at least one linear layer to adapt")
    names = "|".join(re.escape(n) for n in lora_cfg.target_modules)
    patterns = [rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"]
    if lora_cfg.vision_tower:
        patterns.append(rf".*visual\.blocks\.\d+\.(attn|mlp)\.({'|'.join(VISION_LINEARS)})")
    return "|".join(f"(?:{p})" for p in patterns)


def apply_lora(model: torch.nn.Module, lora_cfg: Any) -> torch.nn.Module:
    """The model wrapped by peft with fresh LoRA adapters; every base weight frozen."""
    from peft import LoraConfig, get_peft_model

    if lora_cfg.rank < 1:
        raise ModelError(f"model.lora.rank={lora_cfg.rank}: must be >= 1")
    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_target_regex(lora_cfg), bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # peft's "target modules not found"
        raise ModelError(f"model.lora.target_modules={list(lora_cfg.target_modules)}: matched no layer of this model "
                         f"({exc})") from None
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ModelError(f"model.lora.target_modules={list(lora_cfg.target_modules)}: matched no layer of this model")
    return peft_model


def has_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_freeze(model: torch.nn.Module, freeze_cfg: Any) -> list[str]:
    """Freezes the configured parts in place; returns the parts frozen. Raises when nothing would be
    left to train."""
    frozen = [part for part in PARTS if getattr(freeze_cfg, part)]
    for name, param in model.named_parameters():
        if any(PARTS[part].search(name) for part in frozen):
            param.requires_grad_(False)
    if frozen and not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"model.freeze: freezing {frozen} leaves no trainable parameter")
    return frozen


def prepare_for_training(model: torch.nn.Module, model_cfg: Any) -> torch.nn.Module:
    """LoRA or freezing, as configured (LoRA freezes every base weight, so the two do not combine)."""
    frozen = [part for part in PARTS if getattr(model_cfg.freeze, part)]
    if model_cfg.lora.enabled:
        if frozen:
            raise ModelError(f"model.lora.enabled=true with model.freeze.{frozen[0]}=true: LoRA already freezes "
                             "every base weight; use model.lora.vision_tower to choose whether the ViT is adapted")
        return apply_lora(model, model_cfg.lora)
    apply_freeze(model, model_cfg.freeze)
    return model


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights only (what a LoRA checkpoint holds)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def lora_config_dict(lora_cfg: Any) -> dict[str, Any]:
    return {"rank": lora_cfg.rank, "alpha": lora_cfg.alpha, "dropout": lora_cfg.dropout,
            "target_modules": list(lora_cfg.target_modules), "vision_tower": bool(lora_cfg.vision_tower)}
