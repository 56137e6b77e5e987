"""LoRA through peft and freezing: what trains, what the KL reference is, what a checkpoint holds."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_config
from support.prefix_sharing import G, prompt_batch

from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.adapters import ROLES, apply_freeze, apply_lora, trainable_counts
from othink_mr1.runner import build_module

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]


def test_the_kl_reference_is_the_policy_with_adapters_disabled(tmp_path, tiny):
    base = copy.deepcopy(tiny[0])
    cfg = compose_config(["model=tiny", *LORA, f"method.num_generations={G}"], output_dir=tmp_path)
    model = apply_lora(copy.deepcopy(tiny[0]), cfg.model.lora)
    with torch.no_grad():  # adapters that change the policy
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    module = build_module(cfg, model, tiny[1], budget=type("B", (), {"total_steps": 4})(), data_position=None,
                          eval_kwargs={})
    assert module.reference is None and module.adapter_reference  # no second copy of the model
    batch = prompt_batch(tiny[1], "counting", n=2)
    torch.manual_seed(0)
    rollout = module.build_rollout(batch, module.sample(batch))
    plain = GRPOModule(base, tiny[1], cfg.method, total_steps=4, kl=ConstantKL(0.1), scorer="counting")
    mask = rollout.completion_mask.bool()
    with torch.no_grad():
        base_logp = plain.log_probs(base.eval(), rollout)
        policy_logp = module.log_probs(model, rollout)
    assert torch.allclose(rollout.ref_logp[mask], base_logp[mask], atol=1e-5)
    assert not torch.allclose(policy_logp[mask], base_logp[mask], atol=1e-2)
    assert model.training  # the reference pass restores the policy's mode


def test_qwen2_vl_roles_are_what_the_name_patterns_gave(tiny):
    """On Qwen2-VL the roles resolved from the structure select exactly what this project's name
    patterns did before (stated here literally): the same LoRA-wrapped modules, the same frozen
    parameters."""
    import re

    lm = r".*language_model\.layers\.\d+\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    vision = r".*visual\.blocks\.\d+\.(attn|mlp)\.(qkv|proj|fc1|fc2)"
    parts = {"vision_tower": r"(^|\.)visual\.(?!merger\.)", "merger": r"(^|\.)visual\.merger\.",
             "language_model": r"(^|\.)(language_model\.|lm_head\.)"}
    modules = [name for name, _ in tiny[0].named_modules()]
    for overrides, pattern in (([], lm), (["model.lora.vision_tower=true"], f"(?:{lm})|(?:{vision})")):
        model = apply_lora(copy.deepcopy(tiny[0]), compose_config(["model=tiny", *LORA, *overrides]).model.lora)
        adapted = {n.replace("base_model.model.", "", 1) for n, m in model.named_modules()
                   if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
        assert adapted and adapted == {n for n in modules if re.fullmatch(pattern, n)}, overrides
    for role in ROLES:
        model = copy.deepcopy(tiny[0])
        apply_freeze(model, compose_config(["model=tiny", f"model.freeze.{role}=true"]).model.freeze)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and frozen == {n for n, _ in model.named_parameters() if re.search(parts[role], n)}, role


@pytest.mark.parametrize("part, prefix", [("vision_tower", "model.visual.blocks."), ("merger", "model.visual.merger."),
                                          ("language_model", "model.language_model.")])
def test_freeze_options_freeze_exactly_their_part(tiny, part, prefix):
    model = copy.deepcopy(tiny[0])
    cfg = compose_config(["model=tiny", f"model.freeze.{part}=true"]).model.freeze
    assert apply_freeze(model, cfg) == [part]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(prefix) or (part == "vision_tower" and "patch_embed" in n)
                          or (part == "language_model" and n.startswith("lm_head")) for n in frozen)
    assert any(n.startswith(prefix) for n in frozen)
    trainable, total = trainable_counts(model)
    assert 0 < trainable < total


