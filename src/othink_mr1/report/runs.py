"""Finished, failed, terminated and unfinished runs from any source, as one record type the tables read.

Sources:
  - a sweep directory (outputs/sweeps/NAME) or any folder of run directories: results.json for a
    finished run (read by othink_mr1.results, its format's owner), error.json for a failed one,
    config.yaml alone for one that started and never ended;
    the sweep's multirun.yaml adds the cells that never started;
  - a folder of wandb offline runs (`wandb-offline:PATH`, or PATH when it holds no run directories);
  - `wandb:ENTITY/PROJECT` through the wandb API, for runs synced online.
Every source yields the same RunResult for the same run, so the tables built from them are identical.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..naming import run_identity
from ..evaluation.metrics import CURVE_POINT_METRICS
from ..results import DEFAULT_SPLIT, task_protocol
from ..results import FILE as RESULTS_FILE
from ..results import read as read_results
from ..utils.errors import ConfigError

# The metrics the figures draw, by their logged names.
CURVE_METRICS = ("train/reward", "train/kl", "train/beta")
BASE_ROW = "base"
# How an evaluation scored its answers, per task: "r1v" is R1-V's scoring, the paper's protocol (and the
# evaluation's default); "normalized" is the older normalising geometry scorer. Runs that recorded no
# protocol read as LEGACY_PROTOCOL ("normalized"), runs that recorded no split as DEFAULT_SPLIT ("test"):
# the defaults of results.json's missing keys (results.py), which wandb runs share.
PAPER_PROTOCOL = "r1v"


@dataclass
class RunResult:
    run_name: str
    mode: str  # train | eval
    model: str
    status: str  # finished | failed | terminated | unfinished | missing
    sweep: str | None = None
    cell: str | None = None
    task: str | None = None  # the trained task (None for an evaluation)
    method: str | None = None  # sft | grpo | grpo_d | grpo_kl-<schedule>
    kl: str | None = None
    seed: int | None = None
    tag: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # eval task -> accuracy in [0, 1]
    protocol: dict[str, str] = field(default_factory=dict)  # eval task -> scoring protocol of that accuracy
    seconds: float | None = None
    train_seconds: float | None = None
    devices: int | None = None  # processes (GPUs on a GPU run) over all nodes
    error: str | None = None
    eval_split: str = DEFAULT_SPLIT  # test | validation: the split the accuracies were scored on
    # metric -> [(optimizer step, value)], for the figures; filled by sources that have them.
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # The training curve (results.json `curve`, evaluation/curve.py): optimizer step -> eval task ->
    # {acc, acc_sampled, kl_to_base}, on the curve's fixed subset; empty for runs without one.
    curve: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def row(self) -> str:
        """The table row: the base model (an evaluation, the row zero) or the training method."""
        return BASE_ROW if self.mode == "eval" else (self.method or "?")

    @property
    def label(self) -> str:
        """The cell as a sweep names it (base, sft, beta_0.01, ...), else its row."""
        return self.cell or self.row


def _identity(payload: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_name", "mode", "model", "sweep", "cell", "task", "method", "kl", "seed", "tag")
    out = {k: payload.get(k) for k in keys}
    out["seed"] = int(out["seed"]) if out["seed"] is not None else None
    return out


# ---------------------------------------------------------------------------------- run dirs


def read_csv_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """train/reward, train/kl, train/beta per optimizer step from csv/metrics.csv (and resumed parts)."""
    curves: dict[str, dict[int, float]] = {m: {} for m in CURVE_METRICS}
    files = sorted((run_dir / "csv").glob("**/metrics.csv"), key=lambda p: (p.parent != run_dir / "csv", str(p)))
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                for metric in CURVE_METRICS:
                    value = row.get(metric)
                    if value not in (None, "") and row.get("step") not in (None, ""):
                        curves[metric][int(float(row["step"]))] = float(value)
    return {m: sorted(points.items()) for m, points in curves.items() if points}


def read_curve(curve: dict[str, Any] | None) -> dict[int, dict[str, dict[str, float]]]:
    """results.json's `curve` (step as text -> task -> metrics) with int steps and only the metrics the
    report reads (the standard errors and counts stay in the file)."""
    return {int(step): {task: {k: float(v[k]) for k in CURVE_POINT_METRICS if v.get(k) is not None}
                        for task, v in point.items()}
            for step, point in sorted((curve or {}).items(), key=lambda kv: int(kv[0]))}


def read_run_dir(run_dir: Path, with_curves: bool = True) -> RunResult | None:
    """A run directory as a RunResult; None when the folder is not a run (no record of any kind)."""
    results, error, config = run_dir / RESULTS_FILE, run_dir / "error.json", run_dir / "config.yaml"
    if results.exists():
        record = read_results(results)  # results.py: the format's one reader (older files' missing keys too)
        result = RunResult(**_identity(record.identity), status="finished", accuracy=record.accuracy,
                           protocol=record.protocols, seconds=record.seconds, train_seconds=record.train_seconds,
                           devices=record.devices, eval_split=record.split, curve=read_curve(record.curve))
    elif error.exists():
        payload = json.loads(error.read_text())
        if payload.get("mode") is None and config.exists():
            import yaml

            payload = {**run_identity(yaml.safe_load(config.read_text())), **payload}
        if payload.get("mode") is None:  # an error record from before identities were written
            payload = {**payload, "run_name": run_dir.name, "mode": "train", "model": "?"}
        payload = {"run_name": run_dir.name, **{k: v for k, v in payload.items() if v is not None}}
        # error.json's status: "failed" (an exception) or "terminated" (a signal; how to go on is in "resume").
        status = "terminated" if payload.get("status") == "terminated" else "failed"
        result = RunResult(**_identity(payload), status=status, error=payload.get("error"))
    elif config.exists():
        import yaml

        result = RunResult(**_identity(run_identity(yaml.safe_load(config.read_text()))), status="unfinished")
    else:
        return None
    if with_curves and result.mode == "train":
        result.curves = read_csv_curves(run_dir)
    return result


def planned_cells(sweep_dir: Path) -> list[dict[str, Any]]:
    """The cells a sweep planned, from its multirun.yaml: [{cell, task, seed}] (row zero: no seed)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return []
    import yaml

    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    sweeper = hydra.get("sweeper") or {}
    if not sweeper.get("cells"):
        return []
    from ..grid import planned_jobs

    jobs = planned_jobs(sweeper, hydra.get("overrides", {}).get("task", []))
    out = []
    for job in jobs:
        values = dict(o.split("=", 1) for o in job)
        out.append({"cell": values["cell"], "eval": "mode=eval" in job,
                    "task": None if "mode=eval" in job else values.get("task"),
                    "seed": int(values["seed"]) if "seed" in values and "mode=eval" not in job else None})
    return out


def load_run_dirs(folder: Path, with_curves: bool = True) -> list[RunResult]:
    """Every run directory directly under `folder` (a sweep) or `folder` itself (one run), plus the
    sweep's planned cells that have no directory, as status "missing"."""
    folder = Path(folder)
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    results = [r for r in (read_run_dir(p, with_curves) for p in candidates) if r is not None]
    seen = {(r.cell, r.task if r.mode == "train" else None, r.seed if r.mode == "train" else None) for r in results}
    model = results[0].model if results else "?"
    for plan in planned_cells(folder):
        key = (plan["cell"], plan["task"], plan["seed"])
        if key not in seen:
            where = "" if plan["eval"] else f" {plan['task']} seed {plan['seed']}"
            results.append(RunResult(run_name=f"{plan['cell']}{where} (never started)", mode="eval" if plan["eval"] else "train",
                                     model=model, status="missing", sweep=folder.name, cell=plan["cell"],
                                     task=plan["task"], seed=plan["seed"]))
    return results


# ---------------------------------------------------------------------------------- wandb


def run_from_wandb(config: dict[str, Any], summary: dict[str, Any], exit_code: int | None,
                   history: Iterable[dict[str, Any]] = ()) -> RunResult | None:
    """A wandb run (offline or from the API) as a RunResult; None for runs this project did not log."""
    if "run_name" not in config or "mode" not in config:
        return None
    ident = _identity(config)
    eval_tasks = config.get("eval_tasks") or []
    accuracy = {t: float(summary[f"eval/{t}/acc"]) for t in eval_tasks if summary.get(f"eval/{t}/acc") is not None}
    # eval/<task>/protocol beside the accuracy where the summary has it, else the run's eval.protocol
    # (the logged config: one protocol for every task); a run with neither is a legacy (normalized) run.
    run_eval = (config.get("config") or {}).get("eval") or {}
    run_protocol = run_eval.get("protocol")
    protocol = {t: task_protocol({"protocol": summary.get(f"eval/{t}/protocol") or run_protocol}) for t in accuracy}
    if summary.get("status") == "finished":
        status = "finished"
    elif exit_code not in (None, 0) or summary.get("status") == "failed":
        status = "failed"
    else:
        status = "unfinished"
    result = RunResult(**ident, status=status, accuracy=accuracy if status == "finished" else {},
                       protocol=protocol if status == "finished" else {},
                       seconds=summary.get("seconds"), train_seconds=summary.get("train/seconds"),
                       devices=summary.get("hardware/devices"),
                       error=summary.get("error"), eval_split=run_eval.get("split") or DEFAULT_SPLIT)
    curves: dict[str, dict[int, float]] = {m: {} for m in CURVE_METRICS}
    points: dict[int, dict[str, dict[str, float]]] = {}
    for row in history:
        step = row.get("trainer/global_step", row.get("_step"))
        for metric in CURVE_METRICS:
            value = row.get(metric)
            if value is not None and step is not None and not (isinstance(value, float) and math.isnan(value)):
                curves[metric][int(step)] = float(value)
        if row.get("progress/optimizer_steps") is None:
            continue
        for task in eval_tasks:
            for key, logged in CURVE_POINT_METRICS.items():
                value = row.get(f"eval/{task}/{logged}")
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    points.setdefault(int(row["progress/optimizer_steps"]), {}).setdefault(task, {})[key] = float(value)
    result.curves = {m: sorted(p.items()) for m, p in curves.items() if p}
    if status == "finished":
        result.curve = dict(sorted(points.items()))
    return result


def load_wandb_offline(folder: Path, group: str | None = None) -> list[RunResult]:
    from .wandb_offline import read_offline_runs

    out = []
    for run in read_offline_runs(folder):
        if group and run.group != group:
            continue
        result = run_from_wandb(run.config, run.summary, run.exit_code, run.history)
        if result is not None:
            out.append(result)
    if not out:
        raise ConfigError(f"{folder}: no wandb offline runs of this project"
                          + (f" in group {group!r}" if group else "") + " (looked for **/run-*.wandb)")
    return out


def load_wandb_api(path: str, group: str | None = None, api_factory: Callable[[], Any] | None = None) -> list[RunResult]:
    """Runs of ENTITY/PROJECT (optionally one group) through wandb.Api; `api_factory` is for tests."""
    if path.count("/") != 1:
        raise ConfigError(f"wandb:{path}: expected wandb:ENTITY/PROJECT")
    if api_factory is None:
        import wandb

        api_factory = wandb.Api
    filters = {"group": group} if group else {}
    out = []
    for run in api_factory().runs(path, filters=filters):
        state = getattr(run, "state", None)
        history = run.scan_history(keys=None) if hasattr(run, "scan_history") else []
        result = run_from_wandb(dict(run.config), dict(run.summary), 1 if state in ("failed", "crashed") else None,
                                history)
        if result is not None:
            out.append(result)
    if not out:
        raise ConfigError(f"wandb:{path}: no runs of this project" + (f" in group {group!r}" if group else ""))
    return out


def load_source(source: str, group: str | None = None, with_curves: bool = True) -> list[RunResult]:
    """SOURCE: a sweep (or run) directory, `wandb-offline:PATH`, a folder of wandb offline runs, or
    `wandb:ENTITY/PROJECT`."""
    if source.startswith("wandb:"):
        return load_wandb_api(source[len("wandb:"):], group)
    if source.startswith("wandb-offline:"):
        return load_wandb_offline(Path(source[len("wandb-offline:"):]), group)
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"{source}: no such directory (expected a sweep directory, wandb-offline:PATH or "
                          "wandb:ENTITY/PROJECT)")
    runs = load_run_dirs(path, with_curves)
    if runs:
        return [r for r in runs if group is None or r.sweep == group]
    if any(path.rglob("run-*.wandb")):
        return load_wandb_offline(path, group)
    raise ConfigError(f"{source}: holds no run directories (results.json, error.json or config.yaml) and no "
                      "wandb offline runs")
