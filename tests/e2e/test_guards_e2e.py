"""Numerical guards in real runs: a NaN loss or reward skips its step and is counted, k in a row stop the
run; the same config and seed give identical results; evaluation leaves the training draws alone."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from conftest import compose_config
from support.grpo import VARYING, varying_reward  # noqa: F401 - the fixture is used by name

from othink_mr1.methods import grpo as grpo_module
from othink_mr1.methods.evaluation_module import NonFiniteError
from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.methods.sft import SFTModule
from othink_mr1.runner import run


def fingerprint(module) -> str:
    digest = hashlib.sha256()
    for param in module.model.parameters():
        digest.update(param.detach().numpy().tobytes())
    return digest.hexdigest()


def logged(run_dir: Path, column: str) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return [float(r[column]) for r in rows if r.get(column) not in (None, "")]


def nan_loss_at(monkeypatch, calls: set[int]) -> None:
    """grpo_loss returns NaN on the given (0-based) calls."""
    original, count = grpo_module.grpo_loss, [0]

    def loss(*args, **kwargs):
        value, stats = original(*args, **kwargs)
        count[0] += 1
        return (value * float("nan"), stats) if count[0] - 1 in calls else (value, stats)

    monkeypatch.setattr(grpo_module, "grpo_loss", loss)


def test_a_nan_loss_skips_that_step_and_counts_it(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {1})
    weights = []
    original = GRPOModule.optimize

    def optimize(self, rollouts):
        original(self, rollouts)
        weights.append(fingerprint(self))

    monkeypatch.setattr(GRPOModule, "optimize", optimize)
    cfg = compose_config(["model=tiny", *VARYING, "method.max_steps=4", "method.lr=1e-2", "kl=constant",
                          "eval.row_zero=false"], output_dir=tmp_path)
    results = run(cfg)
    assert results["train"]["steps"] == 4 and results["train"]["skipped_steps"] == 1
    # Step 2 (the NaN) left every parameter as step 1 did; steps 3 and 4 moved them again.
    assert weights[1] == weights[0] and len(set(weights)) == 3
    assert logged(Path(cfg.paths.run_dir), "train/skipped_steps") == [0.0, 1.0, 1.0, 1.0]


def test_k_nan_steps_in_a_row_stop_the_run_with_the_message(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, set(range(100)))
    cfg = compose_config(["model=tiny", *VARYING, "method.max_steps=6", "kl=constant", "eval.row_zero=false",
                          "method.max_nonfinite_skips=2"], output_dir=tmp_path)
    with pytest.raises(NonFiniteError, match=r"2 consecutive optimizer steps had a non-finite loss, grad_norm \(the "
                                             r"last at step 1\); stopping.*method.max_nonfinite_skips=2"):
        run(cfg)


def test_a_nan_reward_is_caught_too(tmp_path, monkeypatch):
    from othink_mr1.rewards import grpo_rewards

    calls = [0]

    def sometimes_nan(completions, **_):
        calls[0] += 1
        return [float("nan") if calls[0] == 2 else float(len(c) % 5) for c in completions]

    monkeypatch.setitem(grpo_rewards.REWARDS, "length_mod", sometimes_nan)
    cfg = compose_config(["model=tiny", *VARYING, "method.max_steps=3", "kl=constant", "eval.row_zero=false"],
                         output_dir=tmp_path)
    assert run(cfg)["train"]["skipped_steps"] == 1


def test_sft_skips_a_nan_step(tmp_path, monkeypatch):
    original, calls = SFTModule.training_step, [0]

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        calls[0] += 1
        return loss * float("nan") if calls[0] == 2 else loss

    monkeypatch.setattr(SFTModule, "training_step", training_step)
    cfg = compose_config(["model=tiny", "method=sft", "method.max_steps=3", "eval.row_zero=false"], output_dir=tmp_path)
    results = run(cfg)
    assert results["train"]["steps"] == 3 and results["train"]["skipped_steps"] == 1


def results_without_clocks(results: dict) -> dict:
    out = json.loads(json.dumps(results))
    out.pop("seconds")
    out["train"].pop("seconds")
    out.pop("hardware")
    return out


@pytest.mark.slow  # two short runs per method
@pytest.mark.parametrize("method", [["method=sft"], ["method=grpo", "kl=grpo_d"]])
def test_same_config_and_seed_give_identical_results(tmp_path, method):
    runs = []
    for attempt in ("a", "b"):
        cfg = compose_config(["model=tiny_base", *method, "method.max_steps=3", "model.max_new_tokens_cap=16"],
                             output_dir=tmp_path / attempt)
        runs.append(results_without_clocks(run(cfg)))
    assert runs[0]["train"]["steps"] == 3 and runs[0]["after"]
    assert runs[0] == runs[1]


@pytest.mark.slow  # three short runs
def test_evaluating_before_and_during_training_leaves_the_training_draws_alone(tmp_path, varying_reward):
    """A sweep cell (row zero off: the grid's base cell scores the start once) and the same run alone (row
    zero on), or with in-training validation, sample the same completions: the same losses, rewards and
    final scores. Evaluation never moves the RNG stream GRPO samples from."""
    runs = []
    for name, extra in (("alone", ["eval.row_zero=true"]), ("cell", ["eval.row_zero=false"]),
                        ("validated", ["eval.row_zero=false", "eval.every_n_steps=1"])):
        # A reward that differs between completions, so different draws would show in every logged value.
        cfg = compose_config(["model=tiny_base", "method=grpo", "kl=grpo_d", "method.max_steps=3", *VARYING,
                              "model.max_new_tokens_cap=16", "trainer.checkpoint_every_n_steps=null", *extra],
                             output_dir=tmp_path / name)
        result = run(cfg)
        runs.append((result["after"], logged(Path(cfg.paths.run_dir), "train/loss"),
                     logged(Path(cfg.paths.run_dir), "train/reward")))
    assert len(runs[0][1]) == 3 and len(set(runs[0][2])) > 1  # the reward moved between steps
    assert runs[0] == runs[1] == runs[2]
