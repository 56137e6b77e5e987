"""Freezing and LoRA by role (vision tower, merger, language model), resolved from the structure of
seven image-text families: the embedded tiny Qwen2-VL and the tiny family folders of
models/tiny_families.py (each well under 1M parameters)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import CACHE, compose_config, family_folder
from torch import nn
from transformers import AutoModelForImageTextToText

from othink_mr1.models.adapters import ROLES, apply_freeze, apply_lora, lora_target_names, model_roles
from othink_mr1.models.factory import ModelError, load_local, tiny_folder
from othink_mr1.models.tiny_families import FAMILIES as TINY_FAMILIES

FAMILIES = ["qwen2_vl", *TINY_FAMILIES]

# What each role is, stated by name per family (the code finds it by structure). Every other parameter
# of the inner model `model.` is the merger's.
VISION_TOWER = {"qwen2_vl": "model.visual.", "qwen2_5_vl": "model.visual.", "qwen3_vl": "model.visual.",
                "idefics3": "model.vision_model.", "llava": "model.vision_tower.",
                "llava_onevision": "model.vision_tower.", "gemma3": "model.vision_tower."}
MERGER = {"qwen2_vl": ("model.visual.merger.",), "qwen2_5_vl": ("model.visual.merger.",),
          "qwen3_vl": ("model.visual.merger.", "model.visual.deepstack_merger_list."),
          "idefics3": ("model.connector.",), "llava": ("model.multi_modal_projector.",),
          "llava_onevision": ("model.multi_modal_projector.", "model.image_newline"),
          "gemma3": ("model.multi_modal_projector.",)}
LANGUAGE_MODEL = {family: ("model.text_model." if family == "idefics3" else "model.language_model.", "lm_head.")
                  for family in FAMILIES}
# The linear layers of one vision block, as each family names them.
VISION_LINEARS = {"qwen2_vl": {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"},
                  "qwen2_5_vl": {"attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
                  "qwen3_vl": {"attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2"},
                  **dict.fromkeys(("idefics3", "llava", "llava_onevision", "gemma3"), {
                      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                      "mlp.fc2"})}
# Where each family keeps its vision blocks.
BLOCKS = {**dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), "model.visual.blocks"),
          "idefics3": "model.vision_model.encoder.layers",
          **dict.fromkeys(("llava", "llava_onevision", "gemma3"), "model.vision_tower.encoder.layers")}
LM_LINEARS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"}
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(family: str) -> nn.Module:
    """A fresh copy of the family's tiny random model: the embedded Qwen2-VL, or a tiny family folder."""
    folder = tiny_folder(compose_config(["model=tiny"]).model, CACHE) if family == "qwen2_vl" else family_folder(family)
    return load_local(folder)[0]


def lora_cfg(vision_tower: bool = False, targets=DEFAULT_TARGETS) -> SimpleNamespace:
    return SimpleNamespace(rank=2, alpha=4, dropout=0.0, target_modules=list(targets), vision_tower=vision_tower)


def wrapped(model: nn.Module) -> set[str]:
    """Names (in the unwrapped model) of the modules peft gave adapters."""
    return {name.replace("base_model.model.", "", 1) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "base_layer")}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_roles_partition_the_parameters(family, tmp_path):
    model = build(family)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    roles = model_roles(model)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for role in ROLES for n in roles[role]) == sorted(names)  # each in exactly one role
    for name in names:
        expected = ("merger" if name.startswith(MERGER[family]) else
                    "vision_tower" if name.startswith(VISION_TOWER[family]) else
                    "language_model" if name.startswith(LANGUAGE_MODEL[family]) else "merger")
        assert name in roles[expected], (name, expected)
    assert all(roles[role] for role in ROLES)
    # transformers' own (name-based) lookup of the decoder agrees.
    decoder = {id(p) for p in model.get_decoder().parameters()}
    params = dict(model.named_parameters())
    assert decoder <= {id(params[n]) for n in roles["language_model"]}
    # The same after a save and reload, and once wrapped by peft (its adapters in their layer's role).
    model.save_pretrained(tmp_path)
    assert model_roles(AutoModelForImageTextToText.from_pretrained(tmp_path)) == roles
    peft_roles = model_roles(apply_lora(model, lora_cfg(vision_tower=True)))
    for role in ROLES:
        base = {n.replace("base_model.model.", "", 1).replace(".base_layer", "") for n in peft_roles[role]
                if "lora_" not in n}
        assert base == set(roles[role]), role
    assert {n for n in peft_roles["language_model"] + peft_roles["vision_tower"] if "lora_" in n}
    assert not any("lora_" in n for n in peft_roles["merger"])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("family", FAMILIES)
def test_freezing_a_role_freezes_exactly_its_parameters(family, role):
    model = build(family)
    roles = model_roles(model)
    freeze = SimpleNamespace(**{r: r == role for r in ROLES})
    assert apply_freeze(model, freeze) == [role]
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(roles[role])


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_the_language_model_and_with_vision_tower_the_vision_blocks(family):
    model = build(family)
    layers = model.config.get_text_config().num_hidden_layers
    depth = len(model.get_submodule(BLOCKS[family]))
    language = {f"{LANGUAGE_MODEL[family][0]}layers.{i}.{linear}" for i in range(layers) for linear in LM_LINEARS}
    assert len(language) == 7 * layers  # 7 linears per decoder layer
    assert set(lora_target_names(model, lora_cfg())) == language
    vision = {f"{BLOCKS[family]}.{i}.{linear}" for i in range(depth) for linear in VISION_LINEARS[family]}
    assert set(lora_target_names(model, lora_cfg(vision_tower=True))) == language | vision
    assert wrapped(apply_lora(model, lora_cfg(vision_tower=True))) == language | vision
    assert wrapped(apply_lora(build(family), lora_cfg())) == language


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_step_trains_every_adapter_and_no_base_weight(family):
    model = apply_lora(build(family), lora_cfg())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and {n for n, p in model.named_parameters() if p.requires_grad} == set(lora)
    ids = torch.randint(20, 90, (2, 12), generator=torch.Generator().manual_seed(0))  # text tokens, no image markup
    model.train()
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in lora.values())
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    torch.optim.SGD(list(lora.values()), lr=0.1).step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == ("lora_B" in name), name  # lora_A's gradient is zero while lora_B starts at zero


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_lora_target_is_named_with_the_layers_that_exist(family):
    with pytest.raises(ModelError, match=r"'nope' names no linear layer of the language model .*q_proj"):
        lora_target_names(build(family), lora_cfg(targets=["q_proj", "nope"]))


def test_a_role_without_parameters_and_a_parameter_without_role_are_errors():
    model = build("llava")
    model.model.multi_modal_projector = nn.Identity()
    with pytest.raises(ModelError, match="model.freeze.merger=true: LlavaForConditionalGeneration has no merger"):
        apply_freeze(model, SimpleNamespace(vision_tower=False, merger=True, language_model=False))
    model.model.vision_tower.encoder.layers = nn.ModuleList()
    with pytest.raises(ModelError, match="model.lora.vision_tower=true: the vision tower of LlavaForConditional"):
        lora_target_names(model, lora_cfg(vision_tower=True))
    # A parameter outside the inner model that is not the output head (a value head, say) has no role:
    # an error, not a parameter that model.freeze silently leaves trainable.
    model = build("llava")
    model.value_head = nn.Linear(32, 1)
    with pytest.raises(ModelError, match=r"\['value_head.weight', 'value_head.bias'\]"):
        model_roles(model)
