"""LoRA in real runs: GRPO trains the adapters and nothing else, frozen parts do not move, a LoRA checkpoint
evaluates the same after reload, bad settings are named (unit tests: tests/models/test_lora.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from support.grpo import VARYING, varying_reward  # noqa: F401 - the fixture is used by name

from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.models.adapters import apply_lora
from othink_mr1.models.factory import ModelError
from othink_mr1.runner import run

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


def test_bad_lora_settings_are_named(tiny):
    bad = compose_config(["model=tiny", *LORA, "model.lora.target_modules=[nope]"]).model.lora
    with pytest.raises(ModelError, match=r"model.lora.target_modules: 'nope' names no linear layer of the language "
                                         r"model of Qwen2VLForConditionalGeneration \(its linear layers: down_proj, "):
        apply_lora(copy.deepcopy(tiny[0]), bad)
    with pytest.raises(ModelError, match="model.lora.enabled=true with model.freeze.vision_tower=true"):
        run(compose_config(["model=tiny", *LORA, "model.freeze.vision_tower=true"]))


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
