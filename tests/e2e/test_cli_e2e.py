"""run.py as a user starts it: a bad override is reported without running, --cfg prints the config
resolved outside a run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT


def test_cli_reports_a_bad_override_without_running(tmp_path):
    env = {"OTHINK_OUTPUT_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "method.lrr=1"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode != 0
    assert "method.lrr" in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, run_name", [
    (["--cfg", "job", "--resolve"], "counting_grpo_d_tiny_base_seed42"),
    (["mode=eval", "seed=3", "--cfg", "job", "--resolve"], "eval_tiny_base_seed3"),
    (["--cfg", "all", "--resolve"], "counting_grpo_d_tiny_base_seed42"),
    (["--cfg", "job"], None),
    (["--cfg", "all"], None),
])
def test_cli_prints_the_config_resolved_outside_a_run(tmp_path, args, run_name):
    env = {"OTHINK_OUTPUT_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    printed = yaml.safe_load(out.stdout)
    if run_name is None:  # unresolved: the interpolations as written
        assert printed["paths"]["run_dir"] == "${hydra:runtime.output_dir}"
        return
    # Where a plain run of these overrides writes, and nothing left unresolved.
    assert printed["run_name"] == run_name
    assert printed["paths"]["run_dir"] == f"{tmp_path}/runs/{run_name}"
    assert "${" not in out.stdout
    if "all" in args:
        assert printed["hydra"]["runtime"]["output_dir"] == f"{tmp_path}/runs/{run_name}"
        assert printed["hydra"]["job_logging"]["handlers"]["file"]["filename"] == f"{tmp_path}/runs/{run_name}/run.log"
    assert not (tmp_path / "runs").exists()
