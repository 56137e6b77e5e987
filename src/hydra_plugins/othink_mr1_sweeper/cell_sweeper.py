"""A sweeper over grid cells: Hydra's basic product of `params`, crossed with named override bundles.

A sweep config (sweeps/*.yaml) lists its cells, each a list of overrides:

    hydra:
      sweeper:
        params: {task: "counting,geometry", seed: "1,2,3"}
        cells:
          base: [mode=eval]                    # the row zero: evaluated once, never trained
          sft: [method=sft]
          grpo: [method=grpo, kl=constant]
          grpo_d: [method=grpo, kl=grpo_d]

so only meaningful (method, kl) pairs run: no SFT x KL-schedule product. A cell whose overrides set
`mode=eval` is the row zero: it keeps the first value of the `task` axis (which decides the eval tasks)
and drops the seed (greedy evaluation does not depend on it), so it runs once per grid.

`seeds=N` on the command line means seeds 1..N; `seeds=1,5` means those seeds.

Jobs report {"status": "finished" | "skipped" | "failed"} (run.py); after the grid, one line counts
them and the process exits with the number of failed cells (capped at 100), 0 when none failed.

With `tune`, the grid first tunes each cell's settings on the validation split, then runs at the best:

    tune:
      seeds: [1]                                  # seeds each candidate is trained with
      search:
        sft: {method.lr: [1.0e-4, 5.0e-4]}        # a key's values are crossed with the other keys'
        grpo_d:
          method.lr: [1.0e-4, 3.0e-4]
          betas: [[kl.beta_min=0.0, kl.beta_max=0.02], [kl.beta_min=0.04, kl.beta_max=0.1]]  # bundles

`tune.choices: PATH` skips phase one and runs the grid at the choices a tuning phase recorded (a
tuning.json, e.g. bench/results/tuned_grid_tuning.json); it must hold a choice for every tuned cell on every
task of the grid, and the sweep folder's tuning.json then says where its choices came from.

Phase one trains every (task, cell, candidate, tune seed) with `eval.split=validation` into
<sweep dir>/tune/ (the report reads only the runs directly in the sweep dir, so tuning runs never
enter its tables). Each (task, cell) keeps the candidate with the best mean validation accuracy on its
trained task (ties: the first listed); <sweep dir>/tuning.json records every score and the choice. Phase
two is the grid above with each cell's chosen overrides. Every cell is tuned the same way, on the same
seeds and budget; the test split is never read before phase two.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from othink_mr1 import grid

log = logging.getLogger(__name__)

MAX_EXIT_CODE = 100


TUNE_DIR = "tune"

# submitit's errors when sbatch refuses a job (its message is sbatch's stderr).
SUBMISSION_ERRORS = ("FailedJobError", "FailedSubmissionError")
# Words of sbatch's refusals -> the hydra.launcher setting they are about.
SBATCH_WORDS = (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("memory", "mem_gb"),
                ("gres", "gpus_per_node"), ("gpu", "gpus_per_node"), ("time limit", "timeout_min"),
                ("cpu", "cpus_per_task"), ("constraint", "constraint"), ("feature", "constraint"),
                ("node configuration", "nodes"), ("task", "tasks_per_node"))


def refused_submission(message: str, launcher: Any) -> str:
    """What a refused submission says: sbatch's message and the hydra.launcher setting it names (or, when no
    word of it points at one, the settings the cluster was asked for)."""
    settings = {k: v for k, v in OmegaConf.to_container(launcher, resolve=False).items()
                if not str(k).startswith("_") and v not in (None, {}, [])}
    lowered = message.lower()
    key = next((key for word, key in SBATCH_WORDS if word in lowered and key in settings), None)
    named = (f"hydra.launcher.{key}={settings[key]}" if key else
             ", ".join(f"hydra.launcher.{k}={v}" for k, v in settings.items() if k != "submitit_folder"))
    return f"SLURM refused the submission ({named}): {' '.join(message.split())}"


def scheduler_logs(config: DictConfig, job: Any) -> Optional[str]:
    """Where a SLURM job of the sweep logged (submitit's <job id>_<task>_log.out/.err), if it ran under submitit."""
    folder = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    job_id = OmegaConf.select(job.hydra_cfg, "hydra.job.id", default=None) if job.hydra_cfg is not None else None
    if not folder or not job_id:
        return None
    root = Path(str(folder).split("%j", 1)[0])
    found = sorted(root.glob(f"**/{job_id}_*_log.err"))
    return ", ".join(str(f) for f in found) or None


TUNING_FILE = "tuning.json"


def candidates(search: Dict[str, Any]) -> List[List[str]]:
    """A cell's search space as override lists, in order: each key's values crossed with the other keys'.
    A scalar value v of key k is `k=v`; a list value is a bundle of overrides (the key only names it)."""
    axes = []
    for key, values in search.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise HydraException(f"hydra.sweeper.tune.search: '{key}' needs a non-empty list of values")
        axes.append([[str(o) for o in v] if isinstance(v, (list, tuple)) else [f"{key}={v}"] for v in values])
    return [[o for part in combo for o in part] for combo in itertools.product(*axes)]


def candidate_tag(overrides: List[str]) -> str:
    """A run-name-safe label for a candidate: method.lr=1e-4, kl.beta=0.04 -> lr1e-4_beta0.04."""
    parts = [o.split("=", 1)[0].rsplit(".", 1)[-1] + o.split("=", 1)[1] for o in overrides]
    return "tune-" + re.sub(r"[^A-Za-z0-9._+-]", "", "_".join(parts))


class CellSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 cells: Optional[Dict[str, List[str]]] = None, tune: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if not cells:
            # Also what selecting the grids' shared base alone (sweeps=_base/grid) ends in: it has no cells.
            raise HydraException("hydra.sweeper.cells is empty: a cell sweep needs at least one cell (pick a grid, "
                                 "sweeps=NAME for sweeps/NAME.yaml; sweeps/_base/grid.yaml is only their shared base)")
        self.cells = {name: [str(o) for o in overrides] for name, overrides in cells.items()}
        if isinstance(tune, DictConfig):
            tune = OmegaConf.to_container(tune, resolve=True)
        self.tune = self._check_tune(tune) if tune else None
        self._final: Optional[List[Override]] = None  # the grid's overrides, planned once tuning has finished

    def _check_tune(self, tune: Dict[str, Any]) -> Dict[str, Any]:
        search = dict(tune.get("search") or {})
        unknown = sorted(set(search) - set(self.cells))
        if unknown:
            raise HydraException(f"hydra.sweeper.tune.search names cells that do not exist: {unknown}; cells: "
                                 f"{list(self.cells)}")
        evaluated = sorted(n for n in search if "mode=eval" in self.cells[n])
        if evaluated:
            raise HydraException(f"hydra.sweeper.tune.search: {evaluated} only evaluate (mode=eval); nothing to tune")
        seeds = [str(s) for s in (tune.get("seeds") or [])]
        if not seeds:
            raise HydraException("hydra.sweeper.tune.seeds is empty: each candidate needs at least one seed")
        choices = tune.get("choices")
        if choices and not Path(str(choices)).is_file():
            raise HydraException(f"hydra.sweeper.tune.choices={choices}: no such file (a tuning.json a tuned grid wrote)")
        return {"seeds": seeds, "search": {name: candidates(space) for name, space in search.items()},
                "choices": str(choices) if choices else None}

    def axes(self, overrides: List[Override]) -> "OrderedDict[str, List[str]]":
        return grid.axes(overrides)

    def jobs(self, overrides: List[Override]) -> List[List[str]]:
        """Every (axes combination) x (cell) job, row zero once (othink_mr1.grid)."""
        return grid.jobs(grid.axes(overrides), self.cells)

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        if self.tune and self.tune["choices"]:
            # Tuned before: the grid at the recorded choices, no tuning phase.
            self._final = overrides
            choices = self.recorded_choices(Path(self.tune["choices"]), Path(str(self.config.hydra.sweep.dir)))
            self._final = None
            jobs = [self.with_choice(job, choices) for job in self.jobs(overrides)]
            log.info(f"[sweep] {len(jobs)} cells at the settings recorded in {self.tune['choices']}")
        elif self.tune:
            # Tuning first; the grid is planned in is_done() once its scores exist.
            self._final = overrides
            jobs = self.tuning_jobs(overrides)
            log.info(f"[sweep] tuning: {len(jobs)} runs on the validation split")
        else:
            jobs = self.jobs(overrides)
            log.info(f"[sweep] {len(jobs)} cells")
        self.check_run_folders(jobs)
        return [list(chunk) for chunk in self.split_overrides_to_chunks(jobs, max_batch_size)]

    def check_run_folders(self, jobs: List[List[str]]) -> None:
        """Each job's run folder (hydra.sweep.subdir, i.e. its run name), from its composed config: two jobs
        with one folder stop the sweep before any job starts (grid.shared_folder_error), since run.py would
        take the second for the first's finished run, or both would write into one folder."""
        loader = self.hydra_context.config_loader
        seen: Dict[str, List[str]] = {}
        for job in jobs:
            folder = str(OmegaConf.select(loader.load_sweep_config(self.config, list(job)), "hydra.sweep.subdir"))
            if folder in seen:
                raise grid.shared_folder_error(folder, seen[folder], job)
            seen[folder] = job

    def is_done(self) -> bool:
        done = super().is_done()
        if done and self._final is not None:
            choices = self.choose(Path(str(self.config.hydra.sweep.dir)))
            jobs = [self.with_choice(job, choices) for job in self.jobs(self._final)]
            self._final = None
            log.info(f"[sweep] {len(jobs)} cells at the tuned settings")
            self.check_run_folders(jobs)
            self.overrides = list(self.overrides) + [list(c) for c in self.split_overrides_to_chunks(jobs, self.max_batch_size)]
            done = super().is_done()
        return done

    # ------------------------------------------------------------------------------------ tuning

    def tuning_jobs(self, overrides: List[Override]) -> List[List[str]]:
        """Every (task, tuned cell, candidate, tune seed): the cell's overrides, the candidate's, scored on
        the validation split, in <sweep dir>/tune/."""
        axes = self.axes(overrides)
        swept = [k for k, v in axes.items() if k not in ("task", "seed") and len(v) > 1]
        if swept:
            raise HydraException(f"{swept}: a tuned grid sweeps only task and seed; tune other settings in "
                                 "hydra.sweeper.tune.search")
        if "task" not in axes:
            # The choice is kept per trained task: without the axis the grid's jobs would find none.
            raise HydraException("a tuned grid needs hydra.sweeper.params.task (the tasks it tunes and runs)")
        fixed = [v[0] for k, v in axes.items() if k not in ("task", "seed")]
        jobs = []
        for task in axes["task"]:
            for name, space in self.tune["search"].items():
                for candidate in space:
                    for seed in self.tune["seeds"]:
                        jobs.append([task, f"seed={seed}", *fixed, *self.cells[name], *candidate,
                                     "eval.split=validation", f"tag={candidate_tag(candidate)}",
                                     f"hydra.sweep.subdir={TUNE_DIR}/${{run_name}}", f"cell={name}"])
        return jobs

    def choose(self, sweep_dir: Path) -> Dict[tuple, List[str]]:
        """The best candidate per (task, cell) from the tuning runs' validation accuracy on their trained task
        (mean over tune seeds; ties: the first listed), written to tuning.json. A cell whose every candidate
        failed stops the sweep: its grid would run at settings nobody chose."""
        from othink_mr1 import results  # the one reader of a run's results.json

        scores: Dict[tuple, Dict[str, List[float]]] = {}
        for path in sorted((sweep_dir / TUNE_DIR).glob(f"*/{results.FILE}")):
            run = results.read(path)
            if run.split == "validation" and run.mode == "train" and run.task in run.accuracy:
                scores.setdefault((run.task, run.cell), {}).setdefault(run.tag, []).append(run.accuracy[run.task])
        record: Dict[str, Dict[str, Any]] = {}
        choices: Dict[tuple, List[str]] = {}
        # Only this grid's tasks: tuning runs of another task, left in tune/ by an earlier grid, are not its business.
        for task in self._grid_tasks():
            for name, space in self.tune["search"].items():
                rows = []
                for candidate in space:
                    found = scores.get((task, name), {}).get(candidate_tag(candidate), [])
                    rows.append({"overrides": candidate, "validation_accuracy": found,
                                 "mean": sum(found) / len(found) if found else None})
                scored = [r for r in rows if r["mean"] is not None]
                if not scored:
                    raise HydraException(f"[sweep] tuning: no candidate of cell '{name}' on task '{task}' finished; "
                                         f"see {sweep_dir / TUNE_DIR}")
                best = max(scored, key=lambda r: r["mean"])  # max keeps the first of equals
                choices[(task, name)] = best["overrides"]
                record.setdefault(task, {})[name] = {"chosen": best["overrides"], "candidates": rows}
                print(f"[sweep] tuned {name} on {task}: {' '.join(best['overrides'])} (validation accuracy "
                      f"{100 * best['mean']:.2f}% over {len(best['validation_accuracy'])} seed(s))", flush=True)
        (sweep_dir / TUNING_FILE).write_text(json.dumps({"seeds": self.tune["seeds"], "tasks": record}, indent=2))
        return choices

    def recorded_choices(self, path: Path, sweep_dir: Path) -> Dict[tuple, List[str]]:
        """The choices of a tuning.json for this grid's tasks and tuned cells (every one must be there), copied
        into the sweep folder's tuning.json with where they came from."""
        try:
            record = json.loads(path.read_text())["tasks"]
        except (OSError, ValueError, KeyError) as exc:
            raise HydraException(f"hydra.sweeper.tune.choices={path}: not a tuning.json ({type(exc).__name__}: {exc})")
        choices: Dict[tuple, List[str]] = {}
        for task in self._grid_tasks():
            for name in self.tune["search"]:
                chosen = ((record.get(task) or {}).get(name) or {}).get("chosen")
                if not chosen:
                    raise HydraException(f"hydra.sweeper.tune.choices={path}: no choice for cell '{name}' on task "
                                         f"'{task}' (the file has {sorted((record.get(task) or {}))} for it)")
                choices[(task, name)] = [str(o) for o in chosen]
                print(f"[sweep] {name} on {task}: {' '.join(chosen)} (recorded in {path})", flush=True)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / TUNING_FILE).write_text(json.dumps({"choices_from": str(path), "tasks": record}, indent=2))
        return choices

    def _grid_tasks(self) -> List[str]:
        assert self._final is not None
        return [v.split("=", 1)[1] for v in self.axes(self._final)["task"]]

    @staticmethod
    def with_choice(job: List[str], choices: Dict[tuple, List[str]]) -> List[str]:
        """A grid job with its cell's chosen settings added before its `cell=` tag."""
        task = next((o.split("=", 1)[1] for o in job if o.startswith("task=")), None)
        cell = next(o.split("=", 1)[1] for o in job if o.startswith("cell="))
        chosen = choices.get((task, cell), [])
        return job[:-1] + chosen + job[-1:] if chosen else job

    def sweep(self, arguments: List[str]) -> Any:
        try:
            returns = super().sweep(arguments)
        except grid.GridError as exc:
            # Axes or cells that make no grid: bad input, said in one line before any job started (exit 2, as run.py).
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except Exception as exc:  # noqa: BLE001 - only a scheduler's refusal is reworded; the rest re-raises
            if type(exc).__module__.startswith("submitit") and type(exc).__name__ in SUBMISSION_ERRORS:
                print(f"[sweep] {refused_submission(str(exc), self.config.hydra.launcher)}", flush=True)
                raise SystemExit(1) from None
            raise
        outcomes: Dict[str, Counter] = {"tuning runs": Counter(), "cells": Counter()}
        failed = []
        for batch in returns:
            for job in batch:
                if job.status == JobStatus.FAILED:  # raised past run.py (a launcher or process fault)
                    value = {"status": "failed", "run_dir": job.working_dir, "error": repr(job._return_value)}
                else:
                    value = job.return_value
                status = value.get("status", "finished") if isinstance(value, dict) else "finished"
                run_dir = Path(str(value.get("run_dir", ""))) if isinstance(value, dict) else Path()
                outcomes["tuning runs" if run_dir.parent.name == TUNE_DIR else "cells"][status] += 1
                if status == "failed":
                    logs = scheduler_logs(self.config, job)
                    failed.append(f"{value.get('run_dir')} ({value.get('error')})" + (f"; logs: {logs}" if logs else ""))
        for kind, counts in outcomes.items():
            if counts or kind == "cells":
                summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                print(f"[sweep] {sum(counts.values())} {kind}: {summary}", flush=True)
        for line in failed:
            print(f"[sweep] failed: {line}", flush=True)
        if failed:
            raise SystemExit(min(len(failed), MAX_EXIT_CODE))
        return returns
