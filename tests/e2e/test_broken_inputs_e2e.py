"""Broken input as a user meets it, through `python run.py` on the tiny model: a bad ground truth in an extra
eval task, a missing, empty or damaged model folder, NaN weights, a truncated last.ckpt on resume=true or
ckpt=, and a run whose training goes NaN. Each ends with exit status 2 and one `error:` line naming the file
(and line, value or tensors), no traceback, and every file that was there before unchanged.
(The checks themselves: tests/data/test_ground_truth_rows.py, tests/models/test_model_folder.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, ROOT, SHRINK, compose_config

from othink_mr1.models.factory import tiny_folder

TIMEOUT = 300


def run_py(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`python run.py` on tiny settings, its runs under `out`."""
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(out), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *SHRINK, f"paths.cache_dir={CACHE}", *args],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)


def assert_one_line_error(process: subprocess.CompletedProcess, expected: str) -> str:
    """Exit status 2, no traceback, and one `error:` line, the last, matching `expected` (a regex)."""
    output = process.stdout + process.stderr
    assert process.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and process.stderr.strip().splitlines()[-1] == errors[0], process.stderr[-3000:]
    assert re.fullmatch(expected, errors[0]), errors[0]
    return errors[0]


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "white").save(path)
    return path


# ---------------------------------------------------------------------------------- ground truth


def test_a_bad_ground_truth_in_an_extra_eval_task_stops_before_training(tmp_path):
    """The issue's reproduction: `"ground_truth": "many"` in a counting JSONL used as an extra eval task
    was found after training, as a traceback. Now the split's load stops the run, before any model."""
    data = tmp_path / "data"
    png(data / "a.png")
    jsonl = data / "counting_extra.jsonl"
    jsonl.write_text("".join(json.dumps({"image_path": "./a.png", "question": "How many items are there?",
                                         "ground_truth": gt}) + "\n" for gt in [3, 4, "many", 5]))
    before = hashes(data)
    out = tmp_path / "out"
    process = run_py(out, "model=tiny", "method=sft", f"tasks.clevr_count.test_jsonl={jsonl}",
                     f"tasks.clevr_count.image_root={data}", "eval.tasks=[counting,clevr_count]")
    assert_one_line_error(process, re.escape(f"error: {jsonl}, line 3: field 'ground_truth': counting ground truth "
                                             "must be an integer, got 'many'"))
    run_dir = out / "runs" / "counting_sft_tiny_seed42"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    assert hashes(data) == before


# ---------------------------------------------------------------------------------- model folders


def _damage(folder: Path, case: str) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes() if weights.exists() else b""
    if case == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
    elif case == "cut_config":
        text = (folder / "config.json").read_text()
        (folder / "config.json").write_text(text[: len(text) // 2])
    elif case == "truncated_weights":
        weights.write_bytes(data[: len(data) // 2])
    elif case == "empty_weights":
        weights.write_bytes(b"")
    elif case == "nan_weights":  # all 0xFF after the header: every float a NaN, the file itself whole
        start = 8 + int.from_bytes(data[:8], "little")
        weights.write_bytes(data[:start] + b"\xff" * (len(data) - start))


MODEL_CASES = {
    "missing": r"model folder {folder} does not exist \(read as a local path, not a hub id 'org/name'\)",
    "empty": r"model folder {folder} is empty: expected a saved model .*",
    "cut_config": r"{folder}/config.json is not valid JSON \(.*\): the file is damaged or cut short",
    "truncated_weights": r"model folder {folder}: model.safetensors is truncated: \d+ bytes, its header describes \d+; "
                         r"re-export or re-download the model",
    "empty_weights": r"model folder {folder}: model.safetensors is empty \(0 bytes\); re-export or re-download the model",
    "nan_weights": r"model '{folder}': non-finite weights \(NaN or inf\) in \d+ of \d+ tensors \(first: "
                   r"model\.visual\.patch_embed\.proj\.weight, .*\) loaded from {folder}/model.safetensors; the file is "
                   r"damaged or was saved from a diverged run: re-export or re-download it",
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_broken_model_folder_is_one_line_before_anything_runs(tmp_path, case):
    """A copy of a real saved model folder (the tiny model's save_pretrained output), damaged as disks and
    copies damage them; scored with model=pretrained model.path=<folder> mode=eval."""
    folder = tmp_path / "model"
    if case != "missing":
        shutil.copytree(tiny_folder(compose_config(["model=tiny"]).model, CACHE), folder)
        _damage(folder, case)
    before = hashes(folder) if folder.exists() else None
    out = tmp_path / "out"
    process = run_py(out, "model=pretrained", f"model.path={folder}", "mode=eval", "eval.tasks=[counting]")
    # A folder's files are checked before the run folder is claimed (runner.check_model_files: the line names
    # the key); its weights' finiteness once they are loaded.
    key = "" if case == "nan_weights" else "model.path: "
    assert_one_line_error(process, "error: " + key + MODEL_CASES[case].format(folder=re.escape(str(folder))))
    assert (hashes(folder) if folder.exists() else None) == before
    assert not list(out.rglob("results.json"))
    if case != "nan_weights":
        # Nothing was claimed or written (Hydra makes the folder and its run.log before the job starts).
        assert {p.name for p in out.rglob("*") if p.is_file()} <= {"run.log"}


# ------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A real two-step SFT run through run.py: (its outputs, its run folder, its arguments)."""
    out = tmp_path_factory.mktemp("short_run")
    args = ["model=tiny", "method=sft", "eval.tasks=[counting]", "eval.row_zero=false"]
    process = run_py(out, *args)
    assert process.returncode == 0, process.stderr[-3000:]
    run_dir = out / "runs" / "counting_sft_tiny_seed42"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return out, run_dir, args


def test_resume_from_a_truncated_last_ckpt_is_refused_and_the_run_folder_untouched(short_run, tmp_path):
    """The run as a kill after its last checkpoint leaves it (no results.json), its last.ckpt then cut in half
    (a partial copy, a full disk): resume=true names the file and says what to do, and changes nothing."""
    source_out, source_run, args = short_run
    out = tmp_path / "out"
    run_dir = out / "runs" / source_run.name
    shutil.copytree(source_run, run_dir)
    (run_dir / "results.json").unlink()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = hashes(run_dir)
    process = run_py(out, *args, "resume=true")
    assert_one_line_error(process, re.escape(f"error: resume=true: {ckpt} is truncated or not a torch.save file (")
                          + r"\d+" + re.escape(" bytes, no zip directory at its end): the checkpoint is damaged; "
                                               "resume from an intact copy (resume=PATH), or start the run again with "
                                               "resume=false (this attempt's files move to attempts/)"))
    assert hashes(run_dir) == before


def test_scoring_a_truncated_checkpoint_is_refused(short_run, tmp_path):
    _, source_run, _ = short_run
    ckpt = tmp_path / "cut.ckpt"
    data = (source_run / "checkpoints" / "last.ckpt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    before = hashes(tmp_path)
    process = run_py(tmp_path / "out", "model=tiny", "mode=eval", f"ckpt={ckpt}", "eval.tasks=[counting]")
    assert_one_line_error(process, re.escape(f"error: ckpt='{ckpt}': {ckpt} is truncated or not a torch.save file (")
                          + r"\d+ bytes, no zip directory at its end\): the checkpoint is damaged")
    assert {k: v for k, v in hashes(tmp_path).items() if not k.startswith("out/")} == before


# ------------------------------------------------------------------------------- NaN in training


def test_a_run_whose_training_goes_nan_stops_with_the_same_kind_of_line(tmp_path):
    """method.lr=1e30: the first update throws the weights far enough that every later backward is NaN. The
    guard skips those steps and, method.max_nonfinite_skips in a row, stops the run: one line naming what was
    non-finite, where (the first tensors, as the load-time check names them) and what to do."""
    out = tmp_path / "out"
    process = run_py(out, "model=tiny", "method=sft", "eval.tasks=[counting]", "eval.row_zero=false", "method.lr=1e30",
                     "method.max_steps=3", "method.max_nonfinite_skips=2")
    assert_one_line_error(process, r"error: 2 consecutive optimizer steps had a non-finite grad_norm \(the last at step "
                                   r"\d+\); stopping\. The step's backward gave non-finite gradients \(NaN or inf\) in "
                                   r"\d+ of \d+ tensors \(first: .*\); the weights are finite\. Lower method\.lr, or "
                                   r"raise method\.max_nonfinite_skips=2")
    assert not (out / "runs" / "counting_sft_tiny_seed42" / "results.json").exists()
