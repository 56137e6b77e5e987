"""Progress in a log, as a user under nohup, SLURM or CI meets it: `python run.py` with stdout in a file (not a
terminal) prints plain progress lines with step counts, no carriage-return redraws of Lightning's bar."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")


def run_logged(tmp_path, *overrides: str) -> tuple[int, str]:
    """run.py on tiny settings, stdout and stderr into one log file (what `nohup ... > log` gives)."""
    log = tmp_path / "run.log"
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), *SHRINK, f"paths.cache_dir={CACHE}",
                               f"paths.output_dir={tmp_path / 'out'}", "trainer.enable_progress_bar=true", *overrides],
                              stdout=fh, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path, timeout=600)
    return done.returncode, log.read_text()


def test_an_sft_run_logged_to_a_file_prints_a_line_per_step_and_per_evaluation(tmp_path):
    """trainer.progress_every_s=0: a line at every step; each with the step count, rate, ETA and SFT's loss."""
    rc, log = run_logged(tmp_path, "model=tiny", "method=sft", "trainer.progress_every_s=0")
    assert rc == 0, log[-3000:]
    steps = re.findall(r"^\[train\] step (\d)/2 \((\d+)%\), [\d.]+ (?:steps/s|s/step), ETA \d+:\d\d, train/loss [\d.]+$",
                       log, re.M)
    assert steps == [("1", "50"), ("2", "100")], log[-3000:]
    # Row zero and the final evaluation: 8 items per task in batches of 8, two tasks.
    for stage in ("row_zero", "final"):
        assert re.search(rf"^\[eval {stage}\] batch 1/2 \(50%\), .*ETA \d+:\d\d$", log, re.M), log[-3000:]
        assert re.search(rf"^\[eval {stage}\] 2/2 batches in \d+:\d\d$", log, re.M), log[-3000:]
    assert "\r" not in log and "it/s" not in log  # no bar: neither tqdm's redraws nor rich's last frame


def test_a_grpo_run_at_the_default_interval_still_logs_its_last_step_with_the_mean_reward(tmp_path):
    """The default interval (30 s) outlasts this run: the closing line of each loop comes anyway."""
    rc, log = run_logged(tmp_path, "model=tiny", *SHRINK_GRPO)
    assert rc == 0, log[-3000:]
    assert re.search(r"^\[train\] step 2/2 \(100%\), .*, train/reward [\d.]+$", log, re.M), log[-3000:]
    assert re.search(r"^\[eval final\] 2/2 batches in \d+:\d\d$", log, re.M), log[-3000:]
    assert "\r" not in log and "it/s" not in log


def test_progress_lines_switched_off_print_nothing(tmp_path):
    rc, log = run_logged(tmp_path, "model=tiny", "method=sft", "eval.row_zero=false", "trainer.progress_every_s=null")
    assert rc == 0, log[-3000:]
    assert not re.search(r"^\[(train|eval)", log, re.M) and "\r" not in log and "it/s" not in log
