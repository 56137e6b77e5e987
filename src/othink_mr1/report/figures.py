"""PNG figures from RunResults: beta(s) of every KL schedule over a run, training reward and KL curves per
method, and the cross-task bar chart in the style of the paper's Fig. 7."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from . import frontier
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


def _pair_by_kind(points: list, height: float) -> tuple[object, list[tuple[object, tuple, str, list]]]:
    """A figure with a row per (model, trained task, other task) of `points` and a column per accuracy kind
    (greedy, sampled), and its panels as (axes, row key, kind, the row's points); (None, []) for no points."""
    keys = ordered([(p.model, p.task, p.other) for p in points])
    if not keys:
        return None, []
    fig, axes = _pyplot().subplots(len(keys), len(frontier.KINDS), figsize=(10, height * len(keys)), squeeze=False)
    return fig, [(axes[i][j], key, kind, [p for p in points if (p.model, p.task, p.other) == key])
                 for i, key in enumerate(keys) for j, kind in enumerate(frontier.KINDS)]


def frontier_figure(runs: list[RunResult], path: Path) -> Path | None:
    """Per trained task, accuracy on it (x) against accuracy on the other task (y) over training: one line
    per method through its mean points (step labels at the ends), the base model starred; greedy and
    sampled side by side."""
    fig, panels = _pair_by_kind(frontier.frontier_points(runs), 4.2)
    for ax, (model, task, other), kind, mine in panels:
        for method in ordered([p.method for p in mine if p.method != "base"]):
            line = sorted((p for p in mine if p.method == method), key=lambda p: p.step)
            xs, ys = [100 * p.trained[kind] for p in line], [100 * p.held[kind] for p in line]
            drawn = ax.plot(xs, ys, marker="o", label=f"{method} (n={max(p.n for p in line)})")[0]
            ax.annotate(f"step {line[-1].step}", (xs[-1], ys[-1]), fontsize=7, color=drawn.get_color(),
                        xytext=(4, 2), textcoords="offset points")
        for base in (p for p in mine if p.method == "base"):
            ax.scatter([100 * base.trained[kind]], [100 * base.held[kind]], marker="*", s=180, color="black",
                       zorder=5, label="base (step 0)")
        ax.set(xlabel=f"{task} accuracy (%, trained)", ylabel=f"{other} accuracy (%)",
               title=f"{kind}: trained on {task} ({model})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path) if fig else None


def forgetting_figure(runs: list[RunResult], path: Path) -> Path | None:
    """The other task's accuracy change against KL to base on the trained task's prompts, every run and curve
    point after step 0, coloured by method, with the least-squares line over all of them."""
    fits = {(m, t, o, kind): fit for m, t, o, kind, group, fit in frontier.forgetting_fits(runs) if group == "all methods"}
    fig, panels = _pair_by_kind(frontier.drift_points(runs), 4.0)
    for ax, key, kind, mine in panels:
        usable = [p for p in mine if kind in p.change]
        for method in frontier.methods_of_points(usable):
            chosen = [p for p in usable if p.method == method]
            ax.scatter([p.kl for p in chosen], [100 * p.change[kind] for p in chosen], s=18, alpha=0.75, label=method)
        fit = fits.get((*key, kind))
        if fit is not None and not math.isnan(fit.slope) and usable:
            xs = [0.0, max(p.kl for p in usable)]
            ax.plot(xs, [fit.intercept + fit.slope * x for x in xs], color="black", linewidth=1,
                    label=f"fit: R² = {fit.r2:.2f}, {fit.slope:+.1f} points/nat")
        model, task, other = key
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set(xlabel=f"KL to base on {task} prompts (nats per completion)",
               ylabel=f"{other} accuracy change (points)", title=f"{kind}: trained on {task} ({model})")
        ax.legend(fontsize=8)
    return _save(fig, path) if fig else None


def kl_beta_figure(runs: list[RunResult], path: Path) -> Path | None:
    """Per trained task, side by side: KL to base on its prompts at the curve points (mean over seeds, min-max
    shaded) and beta(t) per optimizer step, for each method with a KL schedule."""
    chosen = frontier.kl_runs(runs)
    models, _, tasks = index_runs(chosen)
    keys = [(m, t) for m in models for t in tasks if any(r.model == m and r.task == t for r in chosen)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3.6 * len(keys)), squeeze=False)
    for i, (model, task) in enumerate(keys):
        mine = [r for r in chosen if r.model == model and r.task == task]
        for method in frontier.methods_of(mine):
            members = [r for r in mine if row_key(r) == method]
            kl = [[(s, frontier.value(r, s, task, "kl_to_base")) for s in sorted(r.curve)] for r in members]
            steps, mean, low, high = _mean_curve([[(s, v) for s, v in c if v is not None] for c in kl])
            drawn = axes[i][0].plot(steps, mean, marker="o", label=f"{method} (n={len(members)})")[0]
            axes[i][0].fill_between(steps, low, high, alpha=0.2, color=drawn.get_color())
            steps, mean, _, _ = _mean_curve([r.curves["train/beta"] for r in members])
            axes[i][1].plot(steps, mean, color=drawn.get_color(), label=method)
        axes[i][0].set(xlabel="optimizer step", ylabel="KL to base (nats per completion)",
                       title=f"KL to base on {task} prompts ({model})")
        axes[i][1].set(xlabel="optimizer step", ylabel="beta", title=f"beta(t), trained on {task}")
        for ax in axes[i]:
            _integer_steps(ax)
            ax.legend(fontsize=8)
    return _save(fig, path)


def write_figures(runs: list[RunResult], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [beta_schedules(runs, out_dir / "beta_schedules.png"),
            training_curves(runs, out_dir / "training_curves.png"),
            cross_task_bars(runs, out_dir / "cross_task.png"),
            frontier_figure(runs, out_dir / "frontier.png"),
            forgetting_figure(runs, out_dir / "forgetting_vs_kl.png"),
            kl_beta_figure(runs, out_dir / "kl_beta_curves.png")]
    return [p for p in made if p is not None]
