"""The smoke_tuned sweep end to end: tunes, then runs the grid at the chosen setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT


@pytest.mark.slow
def test_smoke_tuned_sweep_tunes_then_runs_the_grid_at_the_choice(tmp_path):
    """Both phases end to end on `tiny` (one task): tuning runs score validation items in tune/, the grid's
    runs carry each cell's chosen overrides, and the report reads only the grid."""
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline")
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweeps=smoke_tuned", "task=counting"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    grid = tmp_path / "sweeps" / "smoke_tuned"
    tuning = json.loads((grid / "tuning.json").read_text())["tasks"]["counting"]
    assert set(tuning) == {"sft", "grpo", "grpo_d"}
    tune_runs = sorted((grid / "tune").glob("*/results.json"))
    assert len(tune_runs) == 6
    for path in tune_runs:
        assert json.loads(path.read_text())["eval_split"] == "validation"
    for cell, record in tuning.items():
        config = yaml.safe_load((grid / f"counting_{cell}_tiny_seed1" / "config.yaml").read_text())
        results = json.loads((grid / f"counting_{cell}_tiny_seed1" / "results.json").read_text())
        assert results["eval_split"] == "test"
        for override in record["chosen"]:
            key, value = override.split("=", 1)
            node = config
            for part in key.split("."):
                node = node[part]
            assert float(node) == float(value), (cell, override)
    assert "[sweep] 6 tuning runs: 6 finished" in out.stdout and "[sweep] 4 cells: 4 finished" in out.stdout
    from othink_mr1.report.runs import load_run_dirs

    assert sorted(r.cell for r in load_run_dirs(grid)) == ["base", "grpo", "grpo_d", "sft"]
