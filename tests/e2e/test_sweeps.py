"""Sweeps as a config group: only valid (method, kl) cells, the row zero once, finished cells skipped on
re-launch, failed cells recorded while the others finish, and the exit code counting failures.

Heavy: the tests that launch a grid as run.py subprocesses (16-36 s each) are marked slow; `make test-fast`
keeps only the in-process config checks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose_config, run_smoke_sweep
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.othink_mr1_sweeper import cell_sweeper

SWEEPS = ROOT / "sweeps"
CELL_SWEEPS = sorted(p.stem for p in SWEEPS.glob("*.yaml")
                     if "cells" in (yaml.safe_load(p.read_text())["hydra"].get("sweeper") or {}))


def sweeper_for(name: str) -> tuple[cell_sweeper.CellSweeper, dict]:
    """The sweeper a sweep config declares (smoke inherits paper_grid's params)."""
    sweep = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
    spec = sweep["hydra"]["sweeper"]
    parents = [d for d in sweep.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    params = {}
    for parent in parents:
        params.update(yaml.safe_load((SWEEPS / f"{parent}.yaml").read_text())["hydra"]["sweeper"].get("params", {}))
    params.update(spec.get("params", {}))
    # Through the module at call time: Hydra's plugin scan re-executes plugin modules on composition.
    return cell_sweeper.CellSweeper(params=params, cells=spec["cells"]), params


def expand(name: str, *cli: str) -> list[list[str]]:
    sweeper, params = sweeper_for(name)
    args = [f"{k}={v}" for k, v in params.items()] + list(cli)
    return sweeper.jobs(OverridesParser.create().parse_overrides(args))


def test_paper_grid_is_base_once_plus_three_methods_per_task_and_seed():
    jobs = expand("paper_grid")
    assert len(jobs) == 1 + 3 * 2 * 3
    base = [j for j in jobs if "cell=base" in j]
    assert base == [["task=counting", "mode=eval", "cell=base"]]  # no seed: greedy eval, run once
    for job in jobs:
        if "method=sft" in job:
            assert not any(o.startswith("kl=") for o in job)  # no SFT x KL-schedule product
    cells = {(j[-1], next(o for o in j if o.startswith("task=")), next((o for o in j if o.startswith("seed=")), None))
             for j in jobs}
    assert len(cells) == len(jobs)  # every job is a distinct cell


def test_seeds_override_sets_the_seed_axis():
    assert {o for j in expand("paper_grid", "seeds=2") for o in j if o.startswith("seed=")} == {"seed=1", "seed=2"}
    assert len(expand("paper_grid", "seeds=2")) == 1 + 3 * 2 * 2
    assert {o for j in expand("paper_grid", "seeds=1,5") for o in j if o.startswith("seed=")} == {"seed=1", "seed=5"}
    with pytest.raises(Exception, match="seeds=many"):
        expand("paper_grid", "seeds=many")


@pytest.mark.parametrize("name", CELL_SWEEPS)
def test_every_cell_of_every_sweep_composes(name, tmp_path):
    """Each cell's overrides compose into a valid config (checked before any job would start)."""
    from othink_mr1.config_checks import check_config

    seen = set()
    for job in expand(name):
        cell = job[-1]
        if cell in seen:
            continue
        seen.add(cell)
        cfg = compose_config([f"sweeps={name}", *job], output_dir=tmp_path, shrink=False)
        check_config(cfg)
        assert cfg.cell == cell.removeprefix("cell=")


@pytest.mark.slow  # composes every cell of the ablation grids
def test_ablation_cells_have_distinct_run_names(tmp_path):
    for name in ("kl_ablation", "format_ablation", "kl_schedules"):
        names = [compose_config([f"sweeps={name}", *job], output_dir=tmp_path, shrink=False).run_name
                 for job in expand(name)]
        assert len(set(names)) == len(names), names


def _sweep(out: Path, *args: str) -> subprocess.CompletedProcess:
    return run_smoke_sweep(out, *args)


@pytest.mark.slow
def test_smoke_sweep_finishes_every_cell_and_relaunch_fills_only_the_gaps(smoke_grid, tmp_path):
    first, shared = smoke_grid
    assert first.returncode == 0, first.stderr[-2000:]
    # Re-launched from a copy: the session's grid stays as the first launch left it.
    grid = tmp_path / "sweeps" / "smoke"
    shutil.copytree(shared, grid)
    finished = sorted(p.parent.name for p in grid.glob("*/results.json"))
    assert finished == ["counting_grpo_d_tiny_seed1", "counting_grpo_tiny_seed1", "counting_sft_tiny_seed1",
                        "eval_tiny_seed42", "geometry_grpo_d_tiny_seed1", "geometry_grpo_tiny_seed1",
                        "geometry_sft_tiny_seed1"]
    results = {p.parent.name: json.loads(p.read_text()) for p in grid.glob("*/results.json")}
    assert results["eval_tiny_seed42"]["cell"] == "base"
    assert {r["method"] for r in results.values()} == {None, "sft", "grpo", "grpo_d"}
    for result in results.values():  # every cell is scored on every task
        assert set(result["after"]) == {"counting", "geometry"}
    assert "[sweep] 7 cells: 7 finished" in first.stdout

    stamps = {p: p.stat().st_mtime_ns for p in grid.glob("*/results.json")}
    second = _sweep(tmp_path, "logger=wandb")
    assert second.returncode == 0
    assert "[sweep] 7 cells: 7 skipped" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in grid.glob("*/results.json")} == stamps  # nothing trained

    (grid / "geometry_sft_tiny_seed1" / "results.json").unlink()
    third = _sweep(tmp_path, "logger=wandb")
    assert third.returncode == 0
    assert "[sweep] 7 cells: 1 finished, 6 skipped" in third.stdout
    assert (grid / "geometry_sft_tiny_seed1" / "results.json").exists()
    assert {p: p.stat().st_mtime_ns for p in grid.glob("*/results.json") if "geometry_sft" not in str(p)} == {
        p: t for p, t in stamps.items() if "geometry_sft" not in str(p)}


TRAINED_CELLS = [f"{task}_{method}_tiny_seed1" for task in ("counting", "geometry") for method in ("sft", "grpo", "grpo_d")]


@pytest.mark.slow
def test_a_sweep_killed_mid_cell_and_relaunched_runs_only_the_remaining_cells(smoke_grid, tmp_path):
    """SIGKILL the whole sweep while a randomly drawn trained cell is mid-training (its step-1
    checkpoint on disk, no results yet), then re-launch it: the finished cells are skipped untouched,
    the killed cell continues from its checkpoint (sweeps set resume=auto) to the same results as an
    uninterrupted sweep, and the cells after it run."""
    seed = random.randrange(10_000)
    target = random.Random(seed).choice(TRAINED_CELLS)
    print(f"kill seed {seed}: {target}")
    grid = tmp_path / "sweeps" / "smoke"
    args = ["trainer.checkpoint_every_n_steps=1"]
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline")
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sweeps=smoke", *args], stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    checkpoint, finished_marker = grid / target / "checkpoints" / "last.ckpt", grid / target / "results.json"
    deadline = time.time() + 600
    while not (checkpoint.exists() and not finished_marker.exists()):
        assert process.poll() is None and not finished_marker.exists() and time.time() < deadline, (
            f"seed {seed}: never caught {target} mid-training\n" + (tmp_path / "first.log").read_text()[-3000:])
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    done = sorted(p.parent.name for p in grid.glob("*/results.json"))
    assert target not in done and "eval_tiny_seed42" in done, (seed, done)
    stamps = {p: p.stat().st_mtime_ns for p in grid.glob("*/results.json")}

    second = run_smoke_sweep(tmp_path, *args)
    assert second.returncode == 0, (seed, second.stderr[-3000:])
    assert f"[sweep] 7 cells: {7 - len(done)} finished, {len(done)} skipped" in second.stdout, (seed, second.stdout)
    for name in done:
        assert f"[sweep] skip {name}: finished" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # what was finished is untouched
    assert len(list(grid.glob("*/results.json"))) == 7
    resumed = json.loads((grid / target / "results.json").read_text())
    assert resumed["train"]["resumed_from"] == str(checkpoint) and resumed["train"]["steps"] == 2, seed
    assert [json.loads(line)["checkpoint"] for line in (grid / target / "resumes.jsonl").read_text().splitlines()] == [
        str(checkpoint)]
    # The same results as the session's uninterrupted smoke sweep (only the checkpoint interval differs).
    uninterrupted = json.loads((smoke_grid[1] / target / "results.json").read_text())
    assert resumed["after"] == uninterrupted["after"], seed
    # Cells that never started have no earlier attempt; nothing was moved or lost.
    assert not list(grid.glob("*/attempts")), seed


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path):
    broken = 'hydra.sweeper.cells.grpo=["method=grpo","kl=constant","task.synthetic.num_train=0"]'
    out = _sweep(tmp_path, broken, "logger=wandb")
    assert out.returncode == 2  # the grpo cell fails on both tasks: the exit code counts failed cells
    assert "[sweep] 7 cells: 2 failed, 5 finished" in out.stdout
    grid = tmp_path / "sweeps" / "smoke"
    for task in ("counting", "geometry"):
        cell = grid / f"{task}_grpo_tiny_seed1"
        assert not (cell / "results.json").exists()
        record = json.loads((cell / "error.json").read_text())
        assert "num_train" in record["error"] or "empty" in record["error"]
        assert (grid / f"{task}_grpo_d_tiny_seed1" / "results.json").exists()
        assert (grid / f"{task}_sft_tiny_seed1" / "results.json").exists()
    # The report places the failed cell in its row, as failed, from the error record run.py wrote.
    from othink_mr1.report.runs import load_run_dirs
    from othink_mr1.report.tables import same_task_table

    grpo = next(r for r in same_task_table(load_run_dirs(grid)).rows if r[1] == "grpo")
    assert grpo[2:] == ["1 failed", "1 failed"]
    # It failed before its wandb run would start; it still has one, marked failed, so wandb agrees.
    from othink_mr1.report.runs import load_wandb_offline
    from othink_mr1.report.tables import build_tables

    from_dirs, from_wandb = build_tables(load_run_dirs(grid)), build_tables(load_wandb_offline(grid))
    assert {n: t.markdown() for n, t in from_dirs.items()} == {n: t.markdown() for n, t in from_wandb.items()}
    assert "failed: " in from_wandb["runs"].markdown()


@pytest.mark.slow
def test_joblib_launcher_runs_the_grid_in_parallel_processes(tmp_path):
    out = _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "n_jobs=2" in out.stdout + out.stderr  # Hydra's joblib launcher, not the serial one
    assert "[sweep] 7 cells: 7 finished" in out.stdout
    assert len(list((tmp_path / "sweeps" / "smoke").glob("*/results.json"))) == 7


def test_slurm_launcher_config_extends_submitit_with_cluster_settings(tmp_path):
    out = _sweep(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                 "--cfg", "hydra", "-p", "hydra.launcher")
    assert out.returncode == 0, out.stderr[-2000:]
    launcher = yaml.safe_load(out.stdout.split("# @package hydra.launcher", 1)[1])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["timeout_min"], launcher["gpus_per_node"]) == ("gpu", 90, 1)
    assert launcher["tasks_per_node"] == 1 and launcher["array_parallelism"] == 16
