"""A run folder and a sweep cell are the user's data, tested as a user meets it: `python run.py` processes
started for real, a second run into a live folder, real SIGTERM / SIGINT / SIGKILL, a re-launched sweep.
Each case asserts the exit code, the message, and that no earlier file changed."""

from __future__ import annotations

import hashlib
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

pytestmark = pytest.mark.slow  # run.py subprocesses, signals

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
# GRPO-D on the tiny model, long enough to be signalled mid-training; the only checkpoint a signal writes.
LONG = [*SHRINK, *SHRINK_GRPO, "model=tiny", "eval.row_zero=false", "model.max_new_tokens_cap=8",
        "method.max_steps=16", "trainer.checkpoint_every_n_steps=1000"]
NAME = "counting_grpo_d_tiny_seed42"


def run_py(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args, f"paths.cache_dir={CACHE}"]


def train_rows(run_dir: Path) -> int:
    """Optimizer steps logged so far, over every attempt (a resumed one logs into csv/resume_<n>/)."""
    total = 0
    for path in (run_dir / "csv").rglob("metrics.csv"):
        lines = path.read_text().splitlines()
        if lines and "train/loss" in lines[0]:
            column = lines[0].split(",").index("train/loss")
            total += sum(1 for line in lines[1:] if line.split(",")[column] != "")
    return total


def wait_for_rows(process: subprocess.Popen, run_dir: Path, rows: int) -> None:
    deadline = time.time() + 300
    while train_rows(run_dir) < rows and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be signalled"


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_live_run_keeps_its_folder_and_signals_stop_it_at_a_checkpoint_it_resumes_from(tmp_path):
    out = tmp_path / "out"
    command = run_py(*LONG, f"paths.output_dir={out}")
    run_dir = out / "runs" / NAME
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_for_rows(first, run_dir, 2)
    # Frozen (SIGSTOP) while the second run starts: on a fast machine the 16 steps end before a second
    # process is up, and a stopped process still holds its lock, as a live one does.
    first.send_signal(signal.SIGSTOP)

    # A second run with the same name (another lr) while the first trains: refused at once, nothing touched.
    before = {k: v for k, v in hashes(run_dir).items() if not k.startswith(("csv/", "run.log"))}
    second = subprocess.run(run_py(*LONG, f"paths.output_dir={out}", "method.lr=0.5"), env=ENV, capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert second.returncode == 2, second.stderr[-2000:]
    message = last_line(second.stderr)
    assert message.startswith(f"error: {run_dir} is in use by another run (pid {first.pid} on ")
    assert "nothing was changed" in message and "Traceback" not in second.stderr
    after = hashes(run_dir)
    assert {k: after.get(k) for k in before} == before  # config.yaml still says lr 1e-4: the first run's
    assert not (run_dir / "attempts").exists()

    # SIGTERM: the step in flight ends, last.ckpt is written at it, exit 128 + 15, error.json says how to go on.
    # Sent while the run is still stopped: it is handled the moment the run goes on (SIGCONT).
    first.send_signal(signal.SIGTERM)
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 143, stderr[-3000:]
    record = json.loads((run_dir / "error.json").read_text())
    assert record["status"] == "terminated" and record["signal"] == "SIGTERM" and record["max_steps"] == 16
    step = record["step"]
    assert 2 <= step < 14 and checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == step
    assert record["resume"] == " ".join(["python run.py", *command[2:], "resume=true"])
    assert last_line(stderr) == (f"[run] terminated by SIGTERM at step {step} of 16 ({run_dir}): "
                                 f"{run_dir / 'checkpoints' / 'last.ckpt'} holds step {step}. To go on: {record['resume']}")
    assert not (run_dir / "results.json").exists() and not (run_dir / "run.lock").exists()

    # Resumed, then SIGINT (Ctrl-C): the same, exit 128 + 2; the first record moved to attempts/, not lost.
    resumed = subprocess.Popen(command + ["resume=true"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    wait_for_rows(resumed, run_dir, step + 2)
    resumed.send_signal(signal.SIGINT)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 130, stderr[-3000:]
    second_record = json.loads((run_dir / "error.json").read_text())
    assert second_record["signal"] == "SIGINT" and second_record["step"] > step
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == second_record["step"]
    [kept] = list((run_dir / "attempts").glob("*/error.json"))
    assert json.loads(kept.read_text())["step"] == step

    finished = subprocess.run(command + ["resume=true"], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["steps"] == 16 and results["train"]["resumed_from"]
    assert not (run_dir / "error.json").exists()


HOLD = """
import sys, time
from othink_mr1.utils.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_folder_whose_holder_was_killed_is_taken_over_with_one_line(tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / NAME
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    refused = subprocess.run(run_py(*SHRINK, *SHRINK_GRPO, "model=tiny", f"paths.output_dir={out}"), env=ENV,
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode == 2 and f"(pid {holder.pid} on " in last_line(refused.stderr)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    taken = subprocess.run(run_py(*SHRINK, *SHRINK_GRPO, "model=tiny", f"paths.output_dir={out}"), env=ENV,
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert taken.returncode == 0, taken.stderr[-3000:]
    lines = [line for line in (taken.stdout + taken.stderr).splitlines() if "taking its lock over" in line]
    assert len(lines) == 1 and f"the run that held this folder is gone (pid {holder.pid} on " in lines[0]
    assert (run_dir / "results.json").exists() and not (run_dir / "run.lock").exists()


SMOKE_ONE_CELL = ["sweeps=smoke", "hydra.sweeper.params.task=counting", "~hydra.sweeper.cells.base",
                  "~hydra.sweeper.cells.grpo", "~hydra.sweeper.cells.grpo_d"]


def test_cells_that_would_share_a_folder_stop_the_sweep_before_any_job(tmp_path):
    bad = "+hydra.sweeper.cells.bad=['method=grpo','method.num_generations=0','method.max_steps=2']"
    swept = subprocess.run(run_py("sweeps=smoke", "hydra.sweeper.params.task=counting", bad),
                           env=dict(ENV, OTHINK_OUTPUT_DIR=str(tmp_path)), capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert swept.returncode == 2, swept.stderr[-3000:]
    message = last_line(swept.stderr)
    assert message.startswith("error: cells 'grpo_d' and 'bad' would share the run folder counting_grpo_d_tiny_seed1")
    assert "method.num_generations: 2 / 0" in message and "tag=<name>" in message
    assert "Traceback" not in swept.stderr
    sweep_dir = tmp_path / "sweeps" / "smoke"
    assert not sweep_dir.exists() or not [p for p in sweep_dir.iterdir() if p.is_dir()]  # no cell ran


def test_a_finished_cell_is_skipped_only_when_it_is_the_same_config(tmp_path):
    env = dict(ENV, OTHINK_OUTPUT_DIR=str(tmp_path))
    first = subprocess.run(run_py(*SMOKE_ONE_CELL), env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    cell = tmp_path / "sweeps" / "smoke" / "counting_sft_tiny_seed1"
    kept = hashes(cell)
    changed = subprocess.run(run_py(*SMOKE_ONE_CELL, "hydra.sweeper.cells.sft=['method=sft','method.max_steps=3',"
                                                     "'method.batch_size=4']"),
                             env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert changed.returncode == 1  # one failed cell
    assert (f"[sweep] FAILED counting_sft_tiny_seed1: {cell} holds a finished run of another config "
            "(method.max_steps: 2 -> 3)") in changed.stderr
    assert "[sweep] 1 cells: 1 failed" in changed.stdout
    assert hashes(cell) == kept
    again = subprocess.run(run_py(*SMOKE_ONE_CELL), env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and "[sweep] skip counting_sft_tiny_seed1: finished" in again.stdout
    assert hashes(cell) == kept


def test_a_plain_run_that_fails_says_so_in_error_json_and_the_report(tmp_path):
    from othink_mr1.report.runs import read_run_dir
    from othink_mr1.report.tables import runs_table

    good = {"image_path": "./one.png", "question": "How many items are there?", "ground_truth": 3}
    jsonl = tmp_path / "clevr.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({"question": "How many?", "ground_truth": 2}) + "\n")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "one.png")
    out = tmp_path / "out"
    failed = subprocess.run(run_py(*SHRINK, *SHRINK_GRPO, "model=tiny", f"paths.output_dir={out}",
                                   f"tasks.clevr_count.test_jsonl={jsonl}", f"tasks.clevr_count.image_root={tmp_path}",
                                   "eval.tasks=[counting,clevr_count]"),
                            env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert failed.returncode == 2
    message = last_line(failed.stderr)
    assert message.startswith("error: ") and str(jsonl) in message and "line 2" in message
    [run_dir] = (out / "runs").iterdir()
    record = json.loads((run_dir / "error.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("RowError: ") and str(jsonl) in record["error"]
    run = read_run_dir(run_dir)
    assert run.status == "failed"
    [row] = runs_table([run]).rows
    assert any(str(cell).startswith("failed: RowError: ") for cell in row)
