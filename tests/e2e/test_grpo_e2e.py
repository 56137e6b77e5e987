"""GRPO through the runner: every trainable parameter moves in a few steps, step metrics are logged, the batch
geometry is checked before training, resume ends where an uninterrupted run does and refuses a changed config
(the module's parts: tests/methods/test_grpo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from safetensors.torch import load_file
from support.grpo import VARYING, Scripted, grpo_cfg, special_ids, varying_reward  # noqa: F401 - varying_reward: an autouse fixture

from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.models.factory import load_local
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError


def test_geometry_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"method.prompts_per_step=4 must equal method.batch_size=3 x "
                                          r"method.accumulate_grad_batches=1 x 1 process\(es\) = 3"):
        run(grpo_cfg(tmp_path, "method.batch_size=3"))
    with pytest.raises(ConfigError, match="method.num_generations=1: GRPO needs at least 2"):
        run(grpo_cfg(tmp_path, "method.num_generations=1"))
    with pytest.raises(ConfigError, match=r"method.rewards: unknown reward\(s\) \['speed'\]"):
        run(grpo_cfg(tmp_path, "+method.rewards.speed=1.0"))
    with pytest.raises(ConfigError, match="kl=constant applies to GRPO only"):
        run(compose_config(["model=tiny", "method=sft", "kl=constant"], output_dir=tmp_path))


def test_a_few_grpo_steps_change_every_trainable_parameter(tmp_path, tiny):
    cfg = grpo_cfg(tmp_path, "method.max_steps=3", "method.lr=1e-3", "kl=constant", "save_model=true",
                   "eval.row_zero=false")
    start = {n: p.detach().clone() for n, p in tiny[0].named_parameters()}
    results = run(cfg)
    # Loaded as the runner loads a model, so the names are the in-memory ones (the saved file's keys
    # follow the checkpoint layout: compared by key, no name would match).
    trained = dict(load_local(Path(cfg.paths.run_dir) / "model")[0].named_parameters())
    assert trained.keys() == start.keys()
    unchanged = [n for n, p in start.items() if torch.equal(trained[n], p)]
    assert not unchanged, f"not updated by GRPO: {unchanged}"
    assert results["train"]["steps"] == 3 and results["train"]["samples"] == 12
    assert results["method"] == "grpo" and results["run_name"] == "counting_grpo_tiny_seed42"
    # How rollouts were decoded: the fixed-shape loop, eager under auto on a CPU.
    assert results["train"]["decode"] == {"compile": "auto", "compiled": False, "fallback": None, "loop": "static"}


def test_step_metrics_are_logged(tmp_path):
    import csv

    cfg = grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false")
    run(cfg)
    rows = [r for r in csv.DictReader((Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open()) if r["train/loss"]]
    assert len(rows) == 2
    for key in ("train/loss", "train/kl", "train/beta", "train/reward", "train/reward_std", "train/frac_reward_zero_std",
                "train/clip_ratio", "train/completion_len", "train/reward/length_mod", "progress/samples", "train/lr"):
        assert rows[0][key] != "", key
    # grpo_d over 2 steps: beta_mid at step 0, then rising after the turn at w = 0.6.
    assert [float(r["train/beta"]) for r in rows] == pytest.approx([0.07, 0.04 + 0.06 * 0.4 / 1.4])
    assert float(rows[0]["train/kl"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 0
    assert float(rows[0]["train/clip_ratio"]) == 0.0  # mu = 1: the clip is inert


@pytest.mark.slow  # three short runs
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    # With a training curve at steps 0, 2 and 4: the stop comes after step 2, whose point the checkpoint holds.
    common = ["method.max_steps=4", "method.lr=1e-3", "kl=adaptive", "trainer.checkpoint_every_n_steps=1",
              "save_model=true", "eval.row_zero=false", "eval.curve_points=3", "eval.curve_items=4",
              "eval.curve_samples=2"]
    uninterrupted = compose_config(["model=tiny", *VARYING, *common], output_dir=tmp_path / "a")
    run(uninterrupted)

    interrupted = compose_config(["model=tiny", *VARYING, *common], output_dir=tmp_path / "b")
    original = GRPOModule.training_step

    def crash_at_step_2(self, batch, batch_idx):
        if self.global_step == 2:
            raise KeyboardInterrupt("simulated preemption")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GRPOModule, "training_step", crash_at_step_2)
    with pytest.raises(BaseException):
        run(interrupted)
    run_dir = Path(interrupted.paths.run_dir)
    assert not (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and saved["kl_schedule"]["beta"] != 0.04

    monkeypatch.setattr(GRPOModule, "training_step", original)
    resumed = compose_config(["model=tiny", *VARYING, *common, "resume=true"], output_dir=tmp_path / "b")
    assert sorted(saved["callbacks"]["TrainingCurve"]["points"]) == ["0", "2"]
    results = run(resumed)
    assert results["train"]["steps"] == 4 and results["train"]["resumed_from"].endswith("last.ckpt")
    whole = json.loads((Path(uninterrupted.paths.run_dir) / "results.json").read_text())
    assert list(results["curve"]) == ["0", "2", "4"] and results["curve"] == whole["curve"]
    a = load_file(str(Path(uninterrupted.paths.run_dir) / "model" / "model.safetensors"))
    b = load_file(str(run_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Nothing of the first attempt was lost: its metrics stay, the resumed attempt logs beside them.
    assert (run_dir / "csv" / "metrics.csv").exists() and (run_dir / "csv" / "resume_1" / "metrics.csv").exists()
    assert len((run_dir / "resumes.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_a_changed_config_or_a_missing_checkpoint(tmp_path):
    cfg = grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false")
    with pytest.raises(ConfigError, match="resume=True: no checkpoint at"):
        run(grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false", "resume=true"))
    run_dir = Path(cfg.paths.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    # A checkpoint that passes resume's file check (it loads, finite weights): the config check is what refuses.
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="the config differs from the one this run started with"):
        run(grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false", "resume=true"))
