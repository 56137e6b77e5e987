"""GSPO trained through the runner and run.py: the run is named gspo, a token-level aggregation is refused,
several updates per rollout with a KL term train (the loss: tests/methods/test_gspo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO, compose_config

from othink_mr1.models.factory import load_local
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError

# The random tiny model never answers correctly: a reward that varies between completions gives the
# update a signal (as tests/test_grpo.py's VARYING).
VARYING = ["method.rewards.accuracy=0.0", "method.rewards.format=0.0", "+method.rewards.length_mod=1.0"]


LENGTH_MOD = "lambda completions, **_: [float(len(c) % 5) for c in completions]"


@pytest.fixture(autouse=True)
def varying_reward(monkeypatch):
    from othink_mr1.rewards import grpo_rewards

    monkeypatch.setitem(grpo_rewards.REWARDS, "length_mod", eval(LENGTH_MOD))


def unchanged_parameters(start, exported: Path) -> list[str]:
    """Trainable parameters of `start` equal in the model a run exported (loaded as the runner loads it,
    so the names match: the saved file's keys are the checkpoint layout's)."""
    trained = dict(load_local(exported)[0].named_parameters())
    assert trained.keys() == dict(start.named_parameters()).keys()
    return [n for n, p in start.named_parameters() if p.requires_grad and torch.equal(trained[n], p.detach())]


def test_a_token_level_aggregation_is_refused(tmp_path):
    cfg = compose_config(["model=tiny", "method=gspo", "method.loss_aggregation=dapo"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="method.loss_aggregation='dapo': GSPO's loss is a mean over sequences"):
        run(cfg)


@pytest.mark.slow  # a run.py subprocess
def test_run_py_trains_gspo_and_names_the_run_gspo(tmp_path, tiny):
    """`python run.py method=gspo model=tiny`, 2 steps with rewards that differ: every weight moves."""
    # run.py in a process of its own, with the varying reward added to the registry first.
    script = (f"import runpy, sys; from othink_mr1.rewards import grpo_rewards; "
              f"grpo_rewards.REWARDS['length_mod'] = {LENGTH_MOD}; "
              f"sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    args = [*SHRINK, *SHRINK_GRPO, "model=tiny", "method=gspo", *VARYING, "method.lr=1e-3", "save_model=true",
            "eval.row_zero=false", f"paths.cache_dir={CACHE}"]
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "counting_gspo_tiny_seed42"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "gspo" and results["run_name"] == "counting_gspo_tiny_seed42" and results["kl"] == "none"
    assert results["train"]["steps"] == 2
    assert "[budget] gspo: 4 prompts/micro-batch" in done.stdout and "after gspo" in done.stdout
    # The memory arithmetic of the loaded model (tests/test_memory_plan.py checks its sums): GSPO keeps no
    # frozen copy (no KL term, no training curve here).
    assert "[memory] per device under auto over 1 process(es), float32: weights " in done.stdout
    assert "frozen starting model 0.0 MiB" in done.stdout
    unchanged = unchanged_parameters(tiny[0], run_dir / "model")
    assert not unchanged, f"not updated by GSPO: {unchanged}"


def test_several_updates_per_rollout_with_a_kl_term(tmp_path, tiny):
    """num_iterations=2: the second update's ratio differs from 1 (the sequence clip is live); with kl=
    the reference is loaded and the KL logged, as in GRPO."""
    import csv

    cfg = compose_config(["model=tiny", "method=gspo", *VARYING, "method.num_iterations=2", "method.lr=1e-3",
                          "method.epsilon=1e-5", "method.epsilon_high=1e-5", "kl=constant", "save_model=true",
                          "eval.row_zero=false"], output_dir=tmp_path)
    results = run(cfg)
    assert results["run_name"] == "counting_gspo_kl-constant_tiny_seed42" and results["method"] == "gspo_kl-constant"
    assert results["train"]["steps"] == 2
    # Both updates log within one training batch: the row kept is the second update's, whose ratio has left
    # a 1e-5 band after one update at lr 1e-3.
    rows = [r for r in csv.DictReader((Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open()) if r["train/loss"]]
    assert len(rows) == 1
    assert float(rows[0]["train/clip_ratio"]) > 0.0 and float(rows[0]["train/kl"]) > 0.0
    assert not unchanged_parameters(tiny[0], Path(cfg.paths.run_dir) / "model")
