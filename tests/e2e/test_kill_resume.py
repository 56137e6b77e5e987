"""Killed runs lose nothing: a GRPO-D run killed with SIGKILL at a random step resumes from its last
checkpoint and ends exactly where an uninterrupted run ends; a checkpoint write killed midway leaves
the previous checkpoint loadable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO
from safetensors.torch import load_file

from othink_mr1.utils.checkpoints import AtomicCheckpointIO

# Heavy: run.py subprocesses killed and resumed (minutes); `make test-fast` skips it.
pytestmark = pytest.mark.slow

RUN = ["model=tiny_base", *SHRINK_GRPO, "kl=grpo_d", "method.max_steps=6", "method.lr=1e-3",
       "trainer.checkpoint_every_n_steps=1", "save_model=true", "eval.row_zero=false", "model.max_new_tokens_cap=16",
       # A training curve at steps 0, 3 and 6, on 8 items per task: resumed, it must come out the same too.
       "eval.curve_points=3", "eval.curve_items=8", "eval.curve_samples=2"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *SHRINK, *RUN, f"paths.output_dir={out}", f"paths.cache_dir={CACHE}",
            *extra]


def train_rows(run_dir: Path) -> int:
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    if not lines:
        return 0
    column = lines[0].split(",").index("train/loss") if "train/loss" in lines[0] else None
    return 0 if column is None else sum(1 for line in lines[1:] if line.split(",")[column] not in ("",))


def test_a_run_killed_at_a_random_step_resumes_to_the_same_end(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    [whole_dir] = (tmp_path / "whole" / "runs").iterdir()

    kill_after = random.Random(os.getpid()).randint(1, 4)  # optimizer steps logged before the kill
    print(f"SIGKILL after {kill_after} logged step(s)")
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    run_dir = out / "runs" / whole_dir.name
    deadline = time.time() + 300
    while train_rows(run_dir) < kill_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "results.json").exists(), "the run finished before it could be killed"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    resumed = subprocess.run(command(out, "resume=true"), env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[run] resuming from" in resumed.stdout

    results = [json.loads((d / "results.json").read_text()) for d in (whole_dir, run_dir)]
    assert results[1]["train"]["resumed_from"] and results[1]["train"]["steps"] == 6
    for key in ("after", "run_name", "curve", "curve_settings"):
        assert results[0][key] == results[1][key], key
    assert list(results[1]["curve"]) == ["0", "3", "6"]
    weights = [load_file(str(d / "model" / "model.safetensors")) for d in (whole_dir, run_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


SLOW_SAVE = """
import io, sys, time, torch
from othink_mr1.utils.checkpoints import AtomicCheckpointIO
real = torch.save
def half_then_hang(obj, fh):
    buffer = io.BytesIO(); real(obj, buffer); data = buffer.getvalue()
    fh.write(data[: len(data) // 2]); fh.flush(); time.sleep(120)
torch.save = half_then_hang
AtomicCheckpointIO().save_checkpoint({"step": 2, "weights": torch.zeros(200_000)}, sys.argv[1])
"""


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "weights": torch.ones(200_000)}, path)
    process = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path)], env=ENV, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.stat().st_size > 0 for p in path.parent.glob(".last.ckpt.*.tmp")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [partial] = list(path.parent.glob(".last.ckpt.*.tmp"))  # the interrupted write, half of it on disk
    assert partial.stat().st_size > 0
    loaded = torch.load(path, weights_only=False)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.ones(200_000))
    # The next save replaces the checkpoint and clears the leftover.
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=False)["step"] == 3 and not list(path.parent.glob("*.tmp"))
