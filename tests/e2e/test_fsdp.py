"""Fully sharded training for real: `trainer=fsdp trainer.accelerator=cpu trainer.devices=2`, two CPU processes over
gloo, launched by Lightning as on a GPU node (utils/distributed.py: PolicyFSDPStrategy shards the policy, the
frozen reference stays whole; rollouts gather the parameters once per rollout).

- a GRPO-D cell and an SFT cell run to the end and give DDP's losses, rewards and accuracies within the float
  tolerance of the reduction order (the same gradients, averaged by a reduce-scatter instead of an all-reduce;
  FSDP's log-prob passes run the plain forward, DDP's the shared-prompt one: 1e-6 apart, tested elsewhere);
- the export is a plain hub folder with DDP's weights to that tolerance;
- a run killed with SIGKILL after 2 of its 4 steps resumes from its checkpoint to the uninterrupted run's weights.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TWO_CPUS = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "trainer.num_threads=1"]
GRPO = ["model=tiny_base", *SHRINK_GRPO, "method.batch_size=2", "kl=grpo_d", "method.lr=1e-3",
        "model.max_new_tokens_cap=48", "save_model=true"]
SFT = ["model=tiny_base", "method=sft", "method.batch_size=2", "method.lr=1e-3", "model.max_new_tokens_cap=24",
       "save_model=true"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", OTHINK_CACHE=str(CACHE),
           OMP_NUM_THREADS="1")
# Loss and rewards per step, and final weights: the reduction order's float noise over a few steps.
TOLERANCE = 1e-4


def command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *SHRINK, f"paths.output_dir={out}", f"paths.cache_dir={CACHE}",
            *overrides]


def run(out: Path, *overrides: str) -> Path:
    done = subprocess.run(command(out, *overrides), capture_output=True, text=True, env=ENV, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    [run_dir] = (out / "runs").iterdir()
    return run_dir


def rows(run_dir: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    path = run_dir / "csv" / name
    if not path.exists():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_training(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        for key in keys:
            assert float(x[key]) == pytest.approx(float(y[key]), abs=TOLERANCE), (key, x["step"])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()  # the plain model's names: FSDP's export is a hub folder
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=TOLERANCE, msg=key)
    results = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    assert {t: r["accuracy"] for t, r in results[0]["after"].items()} == \
        {t: r["accuracy"] for t, r in results[1]["after"].items()}


@pytest.fixture(scope="module")
def grpo_fsdp(tmp_path_factory):
    return run(tmp_path_factory.mktemp("grpo_fsdp"), *GRPO, "trainer=fsdp", *TWO_CPUS, "method.max_steps=4",
               "trainer.checkpoint_every_n_steps=1")


def test_grpo_d_under_fsdp_equals_ddp(grpo_fsdp, tmp_path):
    ddp = run(tmp_path, *GRPO, "trainer=ddp", *TWO_CPUS, "method.max_steps=4", "trainer.checkpoint_every_n_steps=1")
    results = json.loads((grpo_fsdp / "results.json").read_text())
    assert results["train"]["processes"] == 2 and results["train"]["steps"] == 4
    assert any(float(r["train/grad_norm"]) > 0 for r in rows(grpo_fsdp))  # the steps moved the weights
    assert_same_training(grpo_fsdp, ddp, ("train/loss", "train/reward", "train/kl", "train/grad_norm"))
    base = load_file(str(ROOT / "models" / "tiny_base" / "model.safetensors"))
    assert any(not torch.equal(base[k], v) for k, v in weights(grpo_fsdp).items() if k in base)


def test_sft_under_fsdp_equals_ddp(tmp_path):
    fsdp = run(tmp_path / "fsdp", *SFT, "trainer=fsdp", *TWO_CPUS, "method.max_steps=3")
    ddp = run(tmp_path / "ddp", *SFT, "trainer=ddp", *TWO_CPUS, "method.max_steps=3")
    assert_same_training(fsdp, ddp, ("train/loss",))


def test_an_fsdp_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(grpo_fsdp, tmp_path):
    overrides = [*GRPO, "trainer=fsdp", *TWO_CPUS, "method.max_steps=4", "trainer.checkpoint_every_n_steps=1"]
    process = subprocess.Popen(command(tmp_path, *overrides), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    run_dir = tmp_path / "runs" / grpo_fsdp.name
    deadline = time.time() + 600
    while len(rows(run_dir)) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # both ranks
    process.wait()
    assert not (run_dir / "results.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(command(tmp_path, *overrides, "resume=true"), capture_output=True, text=True, env=ENV,
                             timeout=900, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert "[run] resuming from" in resumed.stdout
    whole, again = weights(grpo_fsdp), weights(run_dir)
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    results = [json.loads((d / "results.json").read_text()) for d in (grpo_fsdp, run_dir)]
    assert results[1]["train"]["resumed_from"] and results[0]["after"] == results[1]["after"]
