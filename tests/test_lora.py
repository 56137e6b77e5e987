"""LoRA through peft and freezing: what trains, what the KL reference is, what a checkpoint holds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import compose_config

from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.adapters import ROLES, apply_freeze, apply_lora, trainable_counts
from othink_mr1.models.factory import ModelError
from othink_mr1.runner import build_module, run
from test_grpo import VARYING, varying_reward  # noqa: F401 - the fixture is used by name
from test_prefix_sharing import G, prompt_batch

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]


def keep_final_weights(monkeypatch) -> dict:
    """Filled at the end of training with the policy's parameters (and `_trainable`: the names that
    required grad)."""
    trained: dict = {}
    original = GRPOModule.on_train_end

    def keep_weights(self):
        trained.update({n: p.detach().clone() for n, p in self.model.named_parameters()})
        trained["_trainable"] = {n for n, p in self.model.named_parameters() if p.requires_grad}
        original(self)

    monkeypatch.setattr(GRPOModule, "on_train_end", keep_weights)
    return trained


def test_lora_grpo_trains_the_adapters_and_nothing_else(tmp_path, monkeypatch):
    trained = keep_final_weights(monkeypatch)
    cfg = compose_config(["model=tiny", *LORA, *VARYING, "method.lr=1e-2", "method.max_steps=3", "kl=constant",
                          "eval.row_zero=false"], output_dir=tmp_path)
    from othink_mr1.models.factory import load_model

    base = dict(load_model(cfg.model, cfg.paths.cache_dir)[0].named_parameters())
    run(cfg)
    trainable = trained.pop("_trainable")
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".visual." in n for n in trained) and not any(".visual." in n for n in trainable)
    for name, value in trained.items():
        base_name = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        if name in trainable:
            if "lora_B" in name:  # initialised to zero by peft
                assert value.abs().sum() > 0, f"adapter not updated: {name}"
        else:
            assert torch.equal(value, base[base_name].detach()), f"base weight changed: {name}"
    # The checkpoint holds the adapters alone, with the LoRA settings to rebuild them.
    ckpt = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["lora"]["rank"] == 4 and set(ckpt["state_dict"]) == {f"model.{n}" for n in trainable}


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


@pytest.mark.slow  # a run, an export and two evaluations
def test_a_lora_checkpoint_evaluates_the_same_after_reload(tmp_path):
    train = compose_config(["model=tiny_base", *LORA, "method.lr=5e-3", "method.max_steps=3", "kl=constant",
                            "eval.row_zero=false", "save_model=true", "model.max_new_tokens_cap=24"],
                           output_dir=tmp_path / "train")
    trained = run(train)
    run_dir = Path(train.paths.run_dir)
    for ckpt in (run_dir / "checkpoints" / "last.ckpt", run_dir / "model"):
        evaluated = run(compose_config(["model=tiny_base", "mode=eval", f"ckpt={ckpt}", "model.max_new_tokens_cap=24"],
                                       output_dir=tmp_path / ckpt.name))
        assert {t: r["accuracy"] for t, r in evaluated["after"].items()} == {
            t: r["accuracy"] for t, r in trained["after"].items()}, ckpt
    assert (run_dir / "model" / "adapter" / "adapter_config.json").exists()


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


def test_bad_lora_settings_are_named(tiny):
    bad = compose_config(["model=tiny", *LORA, "model.lora.target_modules=[nope]"]).model.lora
    with pytest.raises(ModelError, match=r"model.lora.target_modules: 'nope' names no linear layer of the language "
                                         r"model of Qwen2VLForConditionalGeneration \(its linear layers: down_proj, "):
        apply_lora(copy.deepcopy(tiny[0]), bad)
    with pytest.raises(ModelError, match="model.lora.enabled=true with model.freeze.vision_tower=true"):
        run(compose_config(["model=tiny", *LORA, "model.freeze.vision_tower=true"]))


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


def test_frozen_parts_do_not_move_in_training(tmp_path, tiny, monkeypatch):
    trained = keep_final_weights(monkeypatch)
    cfg = compose_config(["model=tiny", *VARYING, "model.freeze.vision_tower=true", "model.freeze.merger=true",
                          "method.lr=1e-2", "method.max_steps=2", "eval.row_zero=false", "kl=none"], output_dir=tmp_path)
    run(cfg)
    start = dict(tiny[0].named_parameters())
    trainable = trained.pop("_trainable")
    assert trained.keys() == start.keys() and not any(n.startswith("model.visual.") for n in trainable)
    for name, value in trained.items():
        moved = not torch.equal(value, start[name].detach())
        assert moved == name.startswith("model.language_model."), name
