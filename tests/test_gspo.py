"""GSPO: with the ratio exactly 1 its gradient is GRPO's with the per-sequence mean; the clip acts on whole
sequences; `run.py method=gspo` trains the tiny model and names the run gspo; num_iterations > 1 (the
ratio and the clip live) trains too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO, compose_config

from othink_mr1.methods.grpo_loss import StepSizes, grpo_loss
from othink_mr1.methods.gspo import gspo_loss
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


def random_batch(seed: int) -> dict:
    """Sequences of varied lengths (at least one token each), advantages, reference log-probs, beta."""
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 13, (1,), generator=g))
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    return dict(
        logp=-torch.rand(n, c, generator=g) * 3,
        advantages=torch.randn(n, generator=g),
        mask=(torch.arange(c) < lengths.unsqueeze(1)).long(),
        ref_logp=-torch.rand(n, c, generator=g) * 3,
        beta=float(torch.rand(1, generator=g)) * 0.1,
    )


def loss_and_grad(loss_fn, logp: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    logp = logp.clone().requires_grad_(True)
    loss, _ = loss_fn(logp, **kwargs)
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("seed", range(20))
def test_with_the_ratio_at_one_the_gradient_is_grpos_with_the_sequence_mean(seed):
    b = random_batch(seed)
    common = dict(advantages=b["advantages"], mask=b["mask"], ref_logp=b["ref_logp"], beta=b["beta"])
    # A step of several micro-batches: the normalisers are the step's, not this micro-batch's.
    sizes = StepSizes(num_sequences=b["mask"].shape[0] + 3, num_tokens=int(b["mask"].sum()) + 7, max_completion_length=16)
    for old in (None, b["logp"]):  # mu = 1 (no old log-probs), and mu > 1 before its first update
        gspo = loss_and_grad(gspo_loss, b["logp"], old_logp=old, epsilon=3e-4, epsilon_high=4e-4, sizes=sizes, **common)
        grpo = loss_and_grad(grpo_loss, b["logp"], old_logp=old, epsilon=0.2, aggregation="grpo", sizes=sizes, **common)
        assert torch.allclose(gspo[0], grpo[0], atol=1e-6)
        assert torch.allclose(gspo[1], grpo[1], atol=1e-7)


def test_the_clip_acts_on_whole_sequences():
    eps_low, eps_high = 3e-4, 4e-4
    # Row 0: mean log-ratio 0.1 (above the band) although two of its three tokens have ratio 1.
    # Row 1: the same row with a negative advantage: clipping never helps it, so its gradient stays.
    # Row 2: mean log-ratio 0 (ratio exactly 1) although one token's ratio is e^0.5, far outside
    #        a token-level band: nothing is clipped.
    # Row 3: mean log-ratio -0.1 (below the band) with a negative advantage: clipped, no gradient.
    log_ratio = torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.3], [0.5, -0.5, 0.0], [0.0, 0.0, -0.3]])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones_like(log_ratio, dtype=torch.long)
    old = -torch.ones_like(log_ratio)
    logp = (old + log_ratio).requires_grad_(True)
    loss, stats = gspo_loss(logp, advantages, mask, old_logp=old, epsilon=eps_low, epsilon_high=eps_high)
    loss.backward()
    ratio = log_ratio.mean(dim=1).exp()

    assert torch.equal(logp.grad[0], torch.zeros(3)) and torch.equal(logp.grad[3], torch.zeros(3))
    # d/dlogp_t of -s*A/N = -A * s / |o| / N on every token of an unclipped sequence.
    for row in (1, 2):
        expected = torch.full((3,), float(-advantages[row] * ratio[row] / 3 / 4))
        assert torch.allclose(logp.grad[row], expected), row
    assert float(stats["clip_ratio"]) == pytest.approx(0.5)  # rows 0 and 3: half of the tokens

    # Token-level GRPO with the same band would keep row 0's two tokens at ratio 1 and clip row 2's first.
    token_logp = (old + log_ratio).requires_grad_(True)
    grpo_loss(token_logp, advantages, mask, old_logp=old, epsilon=eps_low, epsilon_high=eps_high)[0].backward()
    assert (token_logp.grad[0, :2] != 0).all() and token_logp.grad[2, 0] == 0


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
