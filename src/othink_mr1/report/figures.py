"""PNG figures from RunResults: beta(s) of every KL schedule over a run, training reward and KL curves per
method, and the cross-task bar chart in the style of the paper's Fig. 7."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .runs import RunResult
from .tables import cross_pairs, index_runs, ordered, row_key, row_runs, stat


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over runs at each step any run logged."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, value in curve:
            if not math.isnan(value):
                by_step[step].append(value)
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def beta_schedules(runs: list[RunResult], path: Path) -> Path | None:
    """beta against the optimizer step, one line per KL schedule and trained task (their betas may
    differ), as logged (adaptive included)."""
    by_schedule: dict[str, list] = defaultdict(list)
    for run in runs:
        if run.kl and run.curves.get("train/beta"):
            by_schedule[f"{run.kl} ({run.task})"].append(run.curves["train/beta"])
    if not by_schedule:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kl in sorted(by_schedule):
        steps, mean, _, _ = _mean_curve(by_schedule[kl])
        ax.plot(steps, mean, label=kl)
    ax.set(xlabel="optimizer step", ylabel="beta (KL coefficient)", title="KL schedules over a run")
    _integer_steps(ax)
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(runs: list[RunResult], path: Path) -> Path | None:
    """Training reward and KL per method (mean over seeds, min-max shaded), one column per trained task."""
    _, _, tasks = index_runs(runs)
    metrics = [m for m in ("train/reward", "train/kl") if any(r.curves.get(m) for r in runs)]
    if not tasks or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(5 * len(tasks), 3.2 * len(metrics)), squeeze=False)
    for j, task in enumerate(tasks):
        trained = [r for r in runs if r.task == task and r.mode == "train"]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for key in ordered([row_key(r) for r in trained]):
                curves = [r.curves[metric] for r in trained if row_key(r) == key and r.curves.get(metric)]
                if not curves:
                    continue
                steps, mean, low, high = _mean_curve(curves)
                ax.plot(steps, mean, label=f"{key} (n={len(curves)})")
                ax.fill_between(steps, low, high, alpha=0.2)
            ax.set(title=f"{metric} - trained on {task}", xlabel="optimizer step", ylabel=metric.split("/")[-1])
            _integer_steps(ax)
            if ax.lines:
                ax.legend(fontsize=8)
    return _save(fig, path)


def cross_task_bars(runs: list[RunResult], path: Path) -> Path | None:
    """Fig. 7 style: for each train -> eval pair, one bar per method (mean +- std over seeds)."""
    models, rows, _ = index_runs(runs)
    pairs = cross_pairs(runs)
    if not pairs:
        return None
    plt = _pyplot()
    model = models[0]
    keys = rows[model]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(pairs) * len(keys) / 3), 4))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        means, errs = [], []
        for train_task, eval_task in pairs:
            s = stat(row_runs(runs, model, key, train_task), eval_task)
            means.append(100 * s.mean if s.values else 0.0)
            errs.append(100 * s.std if s.n > 1 else 0.0)
        xs = [p + (k - (len(keys) - 1) / 2) * width for p in range(len(pairs))]
        bars = ax.bar(xs, means, width, yerr=errs, capsize=3, label=key)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(pairs)), [f"train {t} → eval {e}" for t, e in pairs])
    ax.set(ylabel="accuracy (%)", title=f"Cross-task generalization ({model})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_figures(runs: list[RunResult], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [beta_schedules(runs, out_dir / "beta_schedules.png"),
            training_curves(runs, out_dir / "training_curves.png"),
            cross_task_bars(runs, out_dir / "cross_task.png")]
    return [p for p in made if p is not None]
