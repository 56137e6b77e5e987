"""The tuned grid (sweeps/tuned_grid.yaml): every method's settings tuned the same way on the validation
split, then the grid at each method's best settings, as one command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from hydra_plugins.othink_mr1_sweeper import cell_sweeper

SWEEPS = ROOT / "sweeps"
# The sweeper through its module at call time: Hydra's plugin scan re-executes plugin modules on composition.
CELLS = {"base": ["mode=eval"], "sft": ["method=sft"], "grpo": ["method=grpo", "kl=constant"],
         "grpo_d": ["method=grpo", "kl=grpo_d"]}


def parse(*args: str):
    return OverridesParser.create().parse_overrides(list(args))


def tuned_grid() -> "cell_sweeper.CellSweeper":
    spec = yaml.safe_load((SWEEPS / "tuned_grid.yaml").read_text())["hydra"]["sweeper"]
    parent = yaml.safe_load((SWEEPS / "paper_grid.yaml").read_text())["hydra"]["sweeper"]
    sweeper = cell_sweeper.CellSweeper(params={**parent["params"], **spec["params"]}, cells=parent["cells"], tune=spec["tune"])
    sweeper._final = parse(*(f"{k}={v}" for k, v in {**parent["params"], **spec["params"]}.items()))
    return sweeper


def test_candidates_cross_keys_and_keep_bundles_whole():
    space = {"method.lr": [1e-4, 3e-4], "betas": [["kl.beta_min=0.0", "kl.beta_max=0.02"], ["kl.beta_min=0.04", "kl.beta_max=0.1"]]}
    assert cell_sweeper.candidates(space) == [
        ["method.lr=0.0001", "kl.beta_min=0.0", "kl.beta_max=0.02"],
        ["method.lr=0.0001", "kl.beta_min=0.04", "kl.beta_max=0.1"],
        ["method.lr=0.0003", "kl.beta_min=0.0", "kl.beta_max=0.02"],
        ["method.lr=0.0003", "kl.beta_min=0.04", "kl.beta_max=0.1"],
    ]
    tags = [cell_sweeper.candidate_tag(c) for c in cell_sweeper.candidates(space)]
    assert tags[0] == "tune-lr0.0001_beta_min0.0_beta_max0.02" and len(set(tags)) == 4
    with pytest.raises(HydraException, match="'method.lr' needs a non-empty list"):
        cell_sweeper.candidates({"method.lr": []})


def test_tuned_grid_tunes_every_method_on_validation_with_the_same_lr_grid():
    sweeper = tuned_grid()
    jobs = sweeper.tuning_jobs(sweeper._final)
    # 2 tasks x (3 SFT lrs + 3 lrs x 2 betas for each KL method) x 1 tune seed; the base cell is not tuned.
    assert len(jobs) == 2 * (3 + 6 + 6)
    for job in jobs:
        assert "eval.split=validation" in job and "seed=1" in job and job[-1].startswith("cell=")
        assert "hydra.sweep.subdir=tune/${run_name}" in job and any(o.startswith("tag=tune-") for o in job)
    lrs = {cell: sorted({o for j in jobs if j[-1] == f"cell={cell}" for o in j if o.startswith("method.lr=")})
           for cell in ("sft", "grpo", "grpo_d")}
    assert lrs["grpo"] == lrs["grpo_d"]  # the RL methods get the same lr grid
    tags = [(j[0], j[-1], next(o for o in j if o.startswith("tag="))) for j in jobs]
    assert len(set(tags)) == len(tags)  # every tuning run has its own directory


def _tuning_result(folder: Path, task: str, cell: str, candidate: list[str], seed: int, accuracy: float | None):
    run = folder / "tune" / f"{task}_{cell}_{seed}_{cell_sweeper.candidate_tag(candidate)}"
    run.mkdir(parents=True)
    after = {} if accuracy is None else {task: {"accuracy": accuracy}, "other": {"accuracy": 1.0}}
    run.joinpath("results.json").write_text(json.dumps({
        "run_name": run.name, "mode": "train", "task": task, "cell": cell, "model": "tiny", "seed": seed,
        "tag": cell_sweeper.candidate_tag(candidate), "eval_split": "validation", "after": after}))


def test_choice_is_the_best_mean_validation_accuracy_on_the_trained_task(tmp_path):
    tune = {"seeds": [1, 2], "search": {"sft": {"method.lr": [1e-4, 5e-4, 1e-3]}}}
    sweeper = cell_sweeper.CellSweeper(params={"task": "counting,geometry"}, cells=CELLS, tune=tune)
    sweeper._final = parse("task=counting,geometry", "seed=1,2,3")
    lrs = [["method.lr=0.0001"], ["method.lr=0.0005"], ["method.lr=0.001"]]
    # counting: 5e-4 best on the mean of two seeds (though 1e-3 has the best single seed)
    for cand, accs in zip(lrs, ([0.30, 0.30], [0.50, 0.46], [0.60, 0.20])):
        for seed, acc in zip((1, 2), accs):
            _tuning_result(tmp_path, "counting", "sft", cand, seed, acc)
    # geometry: a tie between 1e-4 and 1e-3 goes to the first listed; 5e-4 failed on both seeds
    for cand, accs in zip(lrs, ([0.40, 0.40], [None, None], [0.40, 0.40])):
        for seed, acc in zip((1, 2), accs):
            _tuning_result(tmp_path, "geometry", "sft", cand, seed, acc)
    choices = sweeper.choose(tmp_path)
    assert choices == {("counting", "sft"): ["method.lr=0.0005"], ("geometry", "sft"): ["method.lr=0.0001"]}
    record = json.loads((tmp_path / "tuning.json").read_text())
    counting = record["tasks"]["counting"]["sft"]
    assert counting["chosen"] == ["method.lr=0.0005"]
    assert [c["mean"] for c in counting["candidates"]] == pytest.approx([0.30, 0.48, 0.40])
    assert record["tasks"]["geometry"]["sft"]["candidates"][1] == {"overrides": ["method.lr=0.0005"],
                                                                   "validation_accuracy": [], "mean": None}
    # The grid runs each cell at its task's choice; the base cell and other cells are left alone.
    jobs = [sweeper.with_choice(j, choices) for j in sweeper.jobs(sweeper._final)]
    sft = [j for j in jobs if j[-1] == "cell=sft"]
    assert len(sft) == 6 and all(j[-2] == ("method.lr=0.0005" if "task=counting" in j else "method.lr=0.0001") for j in sft)
    assert next(j for j in jobs if j[-1] == "cell=base") == ["task=counting", "mode=eval", "cell=base"]


def test_a_cell_with_no_finished_candidate_stops_the_sweep(tmp_path):
    sweeper = cell_sweeper.CellSweeper(params=None, cells=CELLS, tune={"seeds": [1], "search": {"grpo": {"kl.beta": [0.01, 0.04]}}})
    sweeper._final = parse("task=geometry")
    _tuning_result(tmp_path, "geometry", "grpo", ["kl.beta=0.01"], 1, None)
    with pytest.raises(HydraException, match="no candidate of cell 'grpo' on task 'geometry' finished"):
        sweeper.choose(tmp_path)


def test_a_broken_tuning_result_is_named(tmp_path):
    """The sweeper reads tuning runs through othink_mr1.results: a broken results.json stops the choice with
    an error naming the file, never a bare traceback (and never a silently dropped candidate)."""
    from othink_mr1.results import ResultsError

    sweeper = cell_sweeper.CellSweeper(params=None, cells=CELLS, tune={"seeds": [1], "search": {"sft": {"method.lr": [1e-4]}}})
    sweeper._final = parse("task=counting")
    _tuning_result(tmp_path, "counting", "sft", ["method.lr=0.0001"], 1, 0.5)
    [broken] = (tmp_path / "tune").glob("*/results.json")
    broken.write_text('{"run_name": "x", ')
    with pytest.raises(ResultsError, match=f"^{broken}: not valid JSON"):
        sweeper.choose(tmp_path)


def test_the_choice_reads_only_this_grids_tasks(tmp_path):
    """A tuning run of another task, left in tune/ by an earlier grid, neither enters tuning.json nor stops the
    sweep for the cells it lacks."""
    tune = {"seeds": [1], "search": {"sft": {"method.lr": [1e-4]}, "grpo": {"kl.beta": [0.01]}}}
    sweeper = cell_sweeper.CellSweeper(params=None, cells=CELLS, tune=tune)
    sweeper._final = parse("task=counting")
    _tuning_result(tmp_path, "counting", "sft", ["method.lr=0.0001"], 1, 0.5)
    _tuning_result(tmp_path, "counting", "grpo", ["kl.beta=0.01"], 1, 0.4)
    _tuning_result(tmp_path, "geometry", "sft", ["method.lr=0.0001"], 1, 0.3)  # no geometry grpo run
    assert set(sweeper.choose(tmp_path)) == {("counting", "sft"), ("counting", "grpo")}
    assert set(json.loads((tmp_path / "tuning.json").read_text())["tasks"]) == {"counting"}


def test_a_tuned_grid_needs_its_task_axis():
    sweeper = cell_sweeper.CellSweeper(params=None, cells=CELLS, tune={"seeds": [1], "search": {"sft": {"method.lr": [1e-4]}}})
    with pytest.raises(HydraException, match="a tuned grid needs hydra.sweeper.params.task"):
        sweeper.tuning_jobs(parse("seed=1"))


@pytest.mark.parametrize("tune,message", [
    ({"seeds": [1], "search": {"ppo": {"method.lr": [1e-4]}}}, r"cells that do not exist: \['ppo'\]"),
    ({"seeds": [1], "search": {"base": {"method.lr": [1e-4]}}}, r"\['base'\] only evaluate"),
    ({"seeds": [], "search": {"sft": {"method.lr": [1e-4]}}}, "tune.seeds is empty"),
])
def test_bad_tune_settings_are_named(tune, message):
    with pytest.raises(HydraException, match=message):
        cell_sweeper.CellSweeper(params=None, cells=CELLS, tune=tune)


def test_a_tuned_grid_refuses_a_second_swept_setting():
    sweeper = cell_sweeper.CellSweeper(params=None, cells=CELLS, tune={"seeds": [1], "search": {"sft": {"method.lr": [1e-4]}}})
    with pytest.raises(HydraException, match=r"\['method.epochs'\]: a tuned grid sweeps only task and seed"):
        sweeper.tuning_jobs(parse("task=counting", "method.epochs=1,2"))


