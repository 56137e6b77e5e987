"""Data parallelism on CPU: two processes over gloo (`trainer=ddp trainer.accelerator=cpu`), launched
by Lightning exactly as on a GPU node. After every step the ranks hold identical parameters, each
prompt's G completions stay on one rank, and evaluation scores every test item once, giving the
accuracy a single process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO

# Heavy: two-process gloo runs launched by Lightning (minutes); `make test-fast` skips it.
pytestmark = pytest.mark.slow

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
       "trainer.check_distributed=true", "trainer.num_threads=1"]


def run_py(out: Path, *overrides: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", OTHINK_CACHE=str(CACHE),
               OMP_NUM_THREADS="1")
    process = subprocess.run([sys.executable, str(ROOT / "run.py"), *SHRINK, f"paths.output_dir={out}",
                              f"paths.cache_dir={CACHE}", *overrides], capture_output=True, text=True, env=env,
                             timeout=900, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    [results] = list(out.glob("runs/*/results.json"))
    return json.loads(results.read_text())


def accuracies(stage: dict) -> dict[str, tuple[float, int]]:
    return {task: (r["accuracy"], r["n"]) for task, r in stage.items()}


def outputs(stage_dir: Path, task: str) -> list[str]:
    return [json.loads(line)["model_output"] for line in (stage_dir / task / "completions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    results = run_py(out, "model=tiny_base", "mode=eval", "model.max_new_tokens_cap=24")
    return results, out / "runs" / results["run_name"] / "eval" / "eval"


@pytest.mark.parametrize("method", ["grpo", "sft"])
def test_two_ranks_stay_identical_and_evaluate_each_item_once(tmp_path, method, single_process_eval):
    geometry = ([*SHRINK_GRPO, "method.batch_size=2", "method.num_generations=4", "kl=constant"] if method == "grpo"
                else ["method=sft", "method.batch_size=2"])
    out = tmp_path / "ddp"
    results = run_py(out, "model=tiny_base", *DDP, *geometry, "method.lr=1e-3", "method.max_steps=2",
                     "model.max_new_tokens_cap=24")
    run_dir = out / "runs" / results["run_name"]
    assert results["train"]["processes"] == 2 and results["train"]["steps"] == 2

    checks = [json.loads(line) for line in (run_dir / "distributed_checks.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [1, 2]
    assert all(c["identical_parameters"] for c in checks)
    assert all(c["prompts_on_several_ranks"] == [] for c in checks)
    if method == "grpo":
        for check in checks:
            assert [r["rank"] for r in check["ranks"]] == [0, 1]
            for rank in check["ranks"]:  # 2 prompts per rank, each with its G = 4 completions
                assert len(rank["prompts"]) == 2 and rank["completions_per_prompt"] == [4, 4]

    # Row zero over both ranks = a single-process evaluation of the same model, item for item.
    single, single_dir = single_process_eval
    assert accuracies(results["before"]) == accuracies(single["after"])
    for task, summary in results["before"].items():
        assert summary["n"] == 8
        assert outputs(run_dir / "eval" / "row_zero", task) == outputs(single_dir, task)
    # Only rank zero writes: one results file, one run directory.
    assert [p.name for p in (out / "runs").iterdir()] == [results["run_name"]]
