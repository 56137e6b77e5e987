"""What a run trains: LoRA adapters through peft (`model.lora.*`) or the full model with roles frozen
(`model.freeze.*`).

The three roles of an image-text model (`vision_tower`, `merger`, `language_model`) are resolved from
the loaded model's structure, not from module names, so the same settings mean the same thing on every
`AutoModelForImageTextToText` family (tested on Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3/SmolVLM,
LLaVA, LLaVA-OneVision and Gemma3 in tests/models/test_roles.py):

- language_model: the outermost submodule whose `config` is the model's text config
  (`config.get_text_config()`), plus the output head (`get_output_embeddings()`, `lm_head`).
- vision_tower: the outermost submodule whose `config` is `config.vision_config`, less the projector
  modules that some families keep inside it (below).
- merger: every parameter of the inner model (the smallest module holding both of the above) that is
  in neither: LLaVA's and Gemma3's `multi_modal_projector`, Idefics3's `connector`, LLaVA-OneVision's
  `image_newline`; plus, inside the vision tower, the siblings of its transformer blocks that hold a
  linear layer into the language model's width: the Qwen families' `merger`, and Qwen3-VL's
  `deepstack_merger_list`.

Why these rules: every family builds its vision and text submodules from the composite config's own
`vision_config` / `text_config` objects, so "whose config is it" is true by construction (object
identity, checked on all seven families), where transformers' `get_decoder()` / `get_encoder("image")`
are lookups of attribute names (and `get_decoder()` returns the model itself when none matches). Inside
the vision tower, the transformer blocks are the `GradientCheckpointingLayer`s (the base class of every
encoder and decoder layer in transformers 5), and what sits beside them is the patch embedding (a
convolution), position embeddings (`nn.Embedding`), norms, and, in the Qwen families, the merger(s). A
projector's output replaces or is added to token embeddings, so it must end in the language model's
width; requiring a linear layer of exactly that width keeps a patch embedding or norm out of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..utils.errors import ModelError

ROLES = ("vision_tower", "merger", "language_model")


@dataclass
class _Layout:
    """Modules of each role in the unwrapped transformers model."""

    model: nn.Module
    language_model: list[nn.Module]  # the text model and the output head
    vision_tower: nn.Module  # with the projectors in `vision_projectors`, which belong to the merger
    vision_blocks: list[nn.Module]
    vision_projectors: list[nn.Module]
    inner: nn.Module  # holds the vision tower, the text model and the projector


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.get_base_model() if has_adapters(model) else model


def _outermost_with_config(model: nn.Module, config: Any) -> tuple[str, nn.Module] | None:
    """The first (outermost) proper submodule whose `config` is `config`; equality where no module holds
    the object itself (a copied config)."""
    for same in (lambda c: c is config, lambda c: c == config):
        for name, module in model.named_modules():
            if name and same(getattr(module, "config", None)):
                return name, module
    return None


def _parent_name(name: str) -> str:
    return name.rpartition(".")[0]


def _layout(model: nn.Module) -> _Layout:
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = _unwrapped(model)
    cls = type(base).__name__
    config = getattr(base, "config", None)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is None:
        raise ModelError(f"{cls}: its config has no vision_config, so its vision tower cannot be found "
                         "(model.freeze and model.lora need an image-text model)")
    text = _outermost_with_config(base, config.get_text_config())
    vision = _outermost_with_config(base, vision_config)
    if text is None or vision is None:
        raise ModelError(f"{cls}: no submodule holds its {'text' if text is None else 'vision'} config, so its "
                         f"{'language model' if text is None else 'vision tower'} cannot be found")
    (text_name, text_module), (vision_name, vision_module) = text, vision
    text_params = {id(p) for p in text_module.parameters()}
    if any(id(p) in text_params for p in vision_module.parameters()):
        raise ModelError(f"{cls}: its vision tower ({vision_name}) and language model ({text_name}) share "
                         "parameters, so they cannot be told apart")
    language_model = [text_module]
    head = base.get_output_embeddings()
    if head is not None:
        language_model.append(head)

    # The inner model: the longest common prefix of the two names.
    common = []
    for a, b in zip(text_name.split("."), vision_name.split(".")):
        if a != b:
            break
        common.append(a)
    inner = base.get_submodule(".".join(common))

    # The vision tower's transformer blocks (outermost layers), and what sits beside them.
    blocks, block_names = [], []
    for name, module in vision_module.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and not any(name.startswith(b + ".") for b in block_names):
            blocks.append(module)
            block_names.append(name)
    width = text_module.get_input_embeddings().weight.shape[-1]
    block_ids = {id(b) for b in blocks}
    projectors = []
    for holder_name in dict.fromkeys(_parent_name(_parent_name(n)) for n in block_names if "." in n):
        holder = vision_module.get_submodule(holder_name)
        for child in holder.children():
            inside = list(child.modules())
            if any(id(m) in block_ids for m in inside):
                continue
            if any(isinstance(m, nn.Linear) and m.out_features == width for m in inside):
                projectors.append(child)
    return _Layout(base, language_model, vision_module, blocks, projectors, inner)


def _parameter_ids(modules: list[nn.Module]) -> set[int]:
    return {id(p) for module in modules for p in module.parameters()}


def model_roles(model: nn.Module) -> dict[str, list[str]]:
    """The names (as `model.named_parameters()` gives them, peft-wrapped or not) of each role's
    parameters. Every parameter is in exactly one role; one outside the inner model other than the
    output head (none in the families above) is a ModelError rather than a parameter no setting
    reaches."""
    layout = _layout(model)
    language = _parameter_ids(layout.language_model)
    vision = _parameter_ids([layout.vision_tower])
    in_vision_projectors = _parameter_ids(layout.vision_projectors)
    ids = {
        "vision_tower": vision - in_vision_projectors,
        "merger": (_parameter_ids([layout.inner]) - language - vision) | in_vision_projectors,
        "language_model": language,
    }
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    orphans = []
    for name, param in model.named_parameters():
        owners = [role for role in ROLES if id(param) in ids[role]]
        if not owners:
            orphans.append(name)
        else:
            roles[owners[0]].append(name)
    if orphans:
        raise ModelError(f"{type(layout.model).__name__}: parameters outside the vision tower, the projector and the "
                         f"language model: {orphans[:5]}; model.freeze and model.lora do not know their role")
    return roles


def lora_target_names(model: nn.Module, lora_cfg: Any) -> list[str]:
    """The full names of the modules that get adapters: the language model's `nn.Linear` layers whose
    last name is in `lora_cfg.target_modules`, and with `lora_cfg.vision_tower` every `nn.Linear` of the
    vision tower's blocks (attention and MLP; not the patch embedding, not the merger)."""
    if not lora_cfg.target_modules:
        raise ModelError("model.lora.target_modules is empty: LoRA needs at least one linear layer to adapt")
    layout = _layout(model)
    cls = type(layout.model).__name__
    names = {id(module): name for name, module in layout.model.named_modules()}

    def linears(modules: list[nn.Module]) -> list[str]:
        found = [names[id(m)] for module in modules for m in module.modules() if isinstance(m, nn.Linear)]
        return list(dict.fromkeys(found))

    language = linears(layout.language_model)
    leaves = {name.rpartition(".")[2] for name in language}
    unknown = [t for t in lora_cfg.target_modules if t not in leaves]
    if unknown:
        raise ModelError(f"model.lora.target_modules: {', '.join(map(repr, unknown))} names no linear layer of the "
                         f"language model of {cls} (its linear layers: {', '.join(sorted(leaves))})")
    targets = [name for name in language if name.rpartition(".")[2] in set(lora_cfg.target_modules)]
    if lora_cfg.vision_tower:
        vision = linears(layout.vision_blocks)
        if not vision:
            raise ModelError(f"model.lora.vision_tower=true: the vision tower of {cls} has no linear layer in its "
                             "blocks")
        targets += vision
    return targets


def apply_lora(model: torch.nn.Module, lora_cfg: Any) -> torch.nn.Module:
    """The model wrapped by peft with fresh LoRA adapters; every base weight frozen."""
    from peft import LoraConfig, get_peft_model

    if lora_cfg.rank < 1:
        raise ModelError(f"model.lora.rank={lora_cfg.rank}: must be >= 1")
    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_target_names(model, lora_cfg), bias="none")
    return get_peft_model(model, config)


def has_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_freeze(model: torch.nn.Module, freeze_cfg: Any) -> list[str]:
    """Freezes the configured roles in place; returns the roles frozen. Raises when a role has no
    parameter in this model, or when nothing would be left to train."""
    frozen = [role for role in ROLES if getattr(freeze_cfg, role)]
    if not frozen:
        return frozen
    roles = model_roles(model)
    params = dict(model.named_parameters())
    for role in frozen:
        if not roles[role]:
            raise ModelError(f"model.freeze.{role}=true: {type(_unwrapped(model)).__name__} has no {role} parameter")
        for name in roles[role]:
            params[name].requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"model.freeze: freezing {frozen} leaves no trainable parameter")
    return frozen


def prepare_for_training(model: torch.nn.Module, model_cfg: Any) -> torch.nn.Module:
    """LoRA or freezing, as configured (LoRA freezes every base weight, so the two do not combine)."""
    frozen = [role for role in ROLES if getattr(model_cfg.freeze, role)]
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
