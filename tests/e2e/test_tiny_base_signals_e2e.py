"""The tiny_base build stopped by a real signal, as a user meets it: `python -m othink_mr1.jobs.tiny_base` with its
stdout in a file (plain progress lines, not a terminal), SIGTERM in the middle of training, then SIGINT in the
evaluation of the re-run. Each exits with 128 + the signal's number, says what it kept and how to go on, prints
no success and writes neither --out nor a manifest; the same command then continues, and the folder it finally
writes holds the weights an uninterrupted build gives."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CACHE, ROOT

from othink_mr1.jobs.tiny_base import partial_folder
from othink_mr1.models.manifest import sha256

# 200 items in batches of 16: 13 batches an epoch (the last one short), 40 steps over 4 epochs; a line per step.
BUILD = ["model.base_build.steps=40", "model.base_build.num_train.counting=100",
         "model.base_build.num_train.geometry=100", "trainer.progress_every_s=0"]
STEPS = 40


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "othink_mr1.jobs.tiny_base", "--out", str(out), "--cache", str(CACHE), *BUILD]


def start(out: Path, log: Path) -> subprocess.Popen:
    fh = log.open("w")
    process = subprocess.Popen(command(out), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()  # the child holds its own copy
    return process


def signal_when(process: subprocess.Popen, log: Path, pattern: str, signum: int) -> None:
    """Send `signum` once a line of `log` matches `pattern` (the build's own progress lines say where it is)."""
    deadline = time.time() + 600
    while not re.search(pattern, log.read_text(), re.M):
        assert process.poll() is None, f"the build ended before '{pattern}':\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signum)


def test_a_build_stopped_by_signals_keeps_its_progress_and_continues_to_the_uninterrupted_weights(tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(command(whole), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out, log = tmp_path / "tb", tmp_path / "build.log"
    partial = partial_folder(out)
    # 1. SIGTERM in the second epoch of training (step 15 of 40 logged).
    process = start(out, log)
    signal_when(process, log, r"^\[train\] step 15/40 ", signal.SIGTERM)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM
    text = log.read_text()
    stopped = int(re.search(r"The training state at step (\d+) of 40 is kept in (\S+); the same command continues "
                            r"from step \1: python -m othink_mr1\.jobs\.tiny_base --out", text).group(1))
    assert 15 <= stopped < STEPS and f"kept in {partial};" in text
    assert re.search(rf"^\[train\] step {stopped}/40 ", text, re.M)  # the stopped step's line came before
    assert "[tiny_base] terminated by SIGTERM: nothing was written to" in text
    assert "wrote" not in text and "test accuracy after pretraining" not in text  # no success, no evaluation
    assert not out.exists() and not list(tmp_path.glob(".tb.building-*"))  # no folder, finished-looking or not
    assert sorted(tmp_path.rglob("manifest.json")) == [whole / "manifest.json"]  # the uninterrupted build's only
    assert sorted(p.name for p in partial.iterdir()) == ["last.ckpt", "partial.json"]
    record = json.loads((partial / "partial.json").read_text())
    assert record["attempts"][-1]["stopped_at_step"] == stopped and record["attempts"][-1]["signal"] == "SIGTERM"

    # 2. The same command continues from that step; SIGINT once its evaluation has begun.
    process = start(out, log)
    signal_when(process, log, r"^\[eval\] ", signal.SIGINT)
    assert process.wait(timeout=300) == 128 + signal.SIGINT
    text = log.read_text()
    assert f"continuing the build of {out} stopped at step {stopped} of 40" in text
    first = int(re.search(r"^\[train\] step (\d+)/40 ", text, re.M).group(1))
    assert first == stopped + 1  # no step done twice, none skipped
    assert re.search(r"^\[train\] step 40/40 \(100%\), .*train/loss [\d.]+$", text, re.M)
    assert "Training had finished (40 of 40 steps)" in text and "redoes only the evaluation" in text
    assert "wrote" not in text and not out.exists()
    record = json.loads((partial / "partial.json").read_text())
    assert record["attempts"][-1]["stopped_at_step"] == STEPS and record["attempts"][-1]["signal"] == "SIGINT"

    # 3. Once more: only the evaluation, then the folder, its manifest naming both interruptions.
    process = start(out, log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"stopped at step {STEPS} of 40" in text and not re.search(r"^\[train\]", text, re.M)
    assert f"[tiny_base] wrote {out}" in text and not partial.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(a["stopped_at_step"], a["signal"]) for a in manifest["built_at"]["interrupted"]] == \
        [(stopped, "SIGTERM"), (STEPS, "SIGINT")]
    # Bit-identical to the uninterrupted build: same data order, optimizer, schedule and random state.
    assert sha256(out / "model.safetensors") == sha256(whole / "model.safetensors")
    report, whole_report = (json.loads((d / "build_report.json").read_text()) for d in (out, whole))
    assert report["accuracy"] == whole_report["accuracy"]
