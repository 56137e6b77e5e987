"""The learning-forgetting frontier from runs' training curves (results.json `curve`, evaluation/curve.py):
what each method gains on the task it trains on against what it loses on the other, and how far it drifts
from the starting model (KL to base), over training and not only at its end.

Tables (each also a CSV; report/figures.py draws the figures from the same data):
- frontier: per trained task and method, the mean over seeds at every curve point of the accuracy on the
  trained task and on the other task, greedy and sampled; step 0 is the base model.
- forgetting_vs_kl: the other task's accuracy change from step 0 against KL to base on the trained task's
  prompts, over every run and curve point after step 0, with least-squares fits and R^2 (all methods
  together and each alone); RL's Razor (arXiv 2509.04259) finds forgetting tracks this KL.
- matched_gain: for each RL method's final accuracy on its trained task, SFT's other-task accuracy and KL
  where SFT's curve first reaches that accuracy (interpolated between curve points): who forgets less at
  the same gain, with 95% intervals over seeds and paired differences by seed.
- kl_curves: KL to base on the trained task's prompts and beta(t) over the steps, per KL method.
- drift_claims: at the last curve point, the paper's claims on sampled accuracy (steadier than greedy on
  a small model) and whether GRPO-D stays closer to the base than GRPO, as paired differences by seed.

All curve accuracies are on the curve's fixed subset of each split, not the full split the other tables
use; every title says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .intervals import CLAIMS, Interval, mean_interval, paired_difference
from .render import Table
from .runs import RunResult
from .tables import IncomparableRunsError, index_runs, ordered, protocol_of, row_key

# Accuracy readouts of a curve point: greedy (the paper's decoding) and sampled (mean@k at temperature 1).
KINDS = {"greedy": "acc", "sampled": "acc_sampled"}
SFT = "sft"
WITHOUT_SFT = "all but sft"
SUBSET = "curve subset"


def curve_runs(runs: list[RunResult]) -> list[RunResult]:
    """Finished training runs that measured a curve."""
    return [r for r in runs if r.mode == "train" and r.status == "finished" and r.curve]


def value(run: RunResult, step: int, task: str, key: str) -> float | None:
    return run.curve.get(step, {}).get(task, {}).get(key)


def last_step(run: RunResult) -> int:
    return max(run.curve)


def other_tasks(runs: list[RunResult], task: str) -> list[str]:
    """The tasks a curve scored besides the trained one."""
    return ordered([t for r in runs if r.task == task for point in r.curve.values() for t in point if t != task])


def groups(runs: list[RunResult]) -> list[tuple[str, str, str, list[RunResult]]]:
    """(model, trained task, other task, that task's runs) for every pair the curves cover."""
    models, _, tasks = index_runs(runs)
    return [(model, task, other, [r for r in runs if r.model == model and r.task == task])
            for model in models for task in tasks for other in other_tasks(runs, task)
            if any(r.model == model and r.task == task for r in runs)]


def methods_of(runs: list[RunResult]) -> list[str]:
    return ordered([row_key(r) for r in runs], ("grpo", SFT, "grpo_d"))


def check_protocols(runs: list[RunResult], name: str) -> str:
    """The one scoring protocol of the runs' curves (they are scored as their evaluation is)."""
    found = {protocol_of(r, t) for r in runs for point in r.curve.values() for t in point}
    if len(found) > 1:
        raise IncomparableRunsError(f"{name}: the curves were scored under different protocols ({', '.join(sorted(found))}); "
                                    "report each protocol's runs separately")
    return next(iter(found), "none")


def fmt(x: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{scale * x:.{digits}f}"


def interval_text(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    return mean_interval(values).text(scale, digits) if values else "—"


# ----------------------------------------------------------------------------------- (a) frontier


@dataclass
class FrontierPoint:
    model: str
    task: str  # trained on
    other: str
    method: str  # row key (base: step 0 of every run)
    step: int
    n: int
    trained: dict[str, float]  # kind -> mean accuracy on the trained task
    held: dict[str, float]  # kind -> mean accuracy on the other task


def frontier_points(runs: list[RunResult]) -> list[FrontierPoint]:
    """Every method's mean point over seeds at each curve step, and the base (step 0, the same for every
    run of a task: the starting model on fixed items, sampled from a fixed seed) first."""
    out = []
    for model, task, other, trained in groups(curve_runs(runs)):
        starts = [r for r in trained if 0 in r.curve]
        if starts:
            out.append(_mean_point(model, task, other, "base", 0, starts))
        for method in methods_of(trained):
            members = [r for r in trained if row_key(r) == method]
            for step in sorted({s for r in members for s in r.curve}):
                out.append(_mean_point(model, task, other, method, step, [r for r in members if step in r.curve]))
    return out


def _mean_point(model: str, task: str, other: str, method: str, step: int, members: list[RunResult]) -> FrontierPoint:
    def mean(t: str, key: str) -> float:
        values = [v for r in members if (v := value(r, step, t, key)) is not None]
        return statistics.fmean(values) if values else math.nan

    return FrontierPoint(model, task, other, method, step, len(members),
                         {kind: mean(task, key) for kind, key in KINDS.items()},
                         {kind: mean(other, key) for kind, key in KINDS.items()})


def frontier_table(runs: list[RunResult]) -> Table | None:
    points = frontier_points(runs)
    if not points:
        return None
    protocol = check_protocols(curve_runs(runs), "Frontier")
    table = Table(title=f"Frontier (scoring: {protocol}; {SUBSET}): accuracy (%) on the trained task and on the other "
                        "task over training, mean over seeds",
                  columns=["model", "trained on", "other task", "method", "step", "n", "trained (greedy)",
                           "other (greedy)", "trained (sampled)", "other (sampled)"], rows=[])
    for p in points:
        table.rows.append([p.model, p.task, p.other, p.method, str(p.step), str(p.n), fmt(p.trained["greedy"]),
                           fmt(p.held["greedy"]), fmt(p.trained["sampled"]), fmt(p.held["sampled"])])
    table.notes.append("base = step 0, the starting model; greedy = the paper's decoding, sampled = mean@k at "
                       "temperature 1; on the curve's fixed items per task (results.json curve_settings), not the "
                       "full split")
    return table


# ---------------------------------------------------------------------------- (b) forgetting vs KL


@dataclass
class DriftPoint:
    model: str
    task: str
    other: str
    method: str
    run: str
    seed: int | None
    step: int
    kl: float  # KL to base on the trained task's prompts (nats per completion)
    change: dict[str, float]  # kind -> other-task accuracy minus the run's own at step 0


def drift_points(runs: list[RunResult]) -> list[DriftPoint]:
    out = []
    for model, task, other, trained in groups(curve_runs(runs)):
        for run in trained:
            start = {kind: value(run, 0, other, key) for kind, key in KINDS.items()}
            for step in sorted(run.curve):
                kl = value(run, step, task, "kl_to_base")
                if step == 0 or kl is None:
                    continue
                change = {kind: (value(run, step, other, key) - start[kind]) for kind, key in KINDS.items()
                          if start[kind] is not None and value(run, step, other, key) is not None}
                out.append(DriftPoint(model, task, other, row_key(run), run.run_name, run.seed, step, kl, change))
    return out


@dataclass
class Fit:
    n: int
    slope: float
    intercept: float
    r2: float


def least_squares(xs: list[float], ys: list[float]) -> Fit:
    """y = intercept + slope x by ordinary least squares, and R^2 (nan where x or y does not vary)."""
    n = len(xs)
    if n < 2:
        return Fit(n, math.nan, math.nan, math.nan)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    if sxx == 0:
        return Fit(n, math.nan, math.nan, math.nan)
    slope = sxy / sxx
    return Fit(n, slope, my - slope * mx, sxy * sxy / (sxx * syy) if syy > 0 else math.nan)


def forgetting_fits(runs: list[RunResult]) -> list[tuple[str, str, str, str, str, Fit]]:
    """(model, trained task, other task, kind, group, fit) for every group: all methods, then each."""
    points = drift_points(runs)
    out = []
    for model, task, other in ordered([(p.model, p.task, p.other) for p in points]):
        mine = [p for p in points if (p.model, p.task, p.other) == (model, task, other)]
        for kind in KINDS:
            usable = [p for p in mine if kind in p.change]
            methods = methods_of_points(usable)
            # Without SFT: SFT drifts an order of magnitude further, so a fit over every method is mostly the
            # gap between its cluster and RL's; this one asks whether forgetting tracks KL within RL.
            extra = [WITHOUT_SFT] if SFT in methods and len(methods) > 2 else []
            for group in ["all methods"] + extra + methods:
                chosen = (usable if group == "all methods" else [p for p in usable if p.method != SFT]
                          if group == WITHOUT_SFT else [p for p in usable if p.method == group])
                out.append((model, task, other, kind, group,
                            least_squares([p.kl for p in chosen], [100 * p.change[kind] for p in chosen])))
    return out


def methods_of_points(points: list[DriftPoint]) -> list[str]:
    return ordered([p.method for p in points], ("grpo", SFT, "grpo_d"))


def forgetting_table(runs: list[RunResult]) -> Table | None:
    fits = forgetting_fits(runs)
    if not fits:
        return None
    protocol = check_protocols(curve_runs(runs), "Forgetting vs KL")
    table = Table(title=f"Forgetting vs KL (scoring: {protocol}; {SUBSET}): the other task's accuracy change against "
                        "KL to base on the trained task's prompts, least squares over runs and curve points",
                  columns=["model", "trained on", "other task", "accuracy", "runs of", "points", "slope (points per nat)",
                           "intercept (points)", "R²"], rows=[])
    for model, task, other, kind, group, fit in fits:
        table.rows.append([model, task, other, kind, group, str(fit.n), fmt(fit.slope, 1), fmt(fit.intercept, 1),
                           fmt(fit.r2, 1, 3)])
    table.notes.append("change = accuracy on the other task minus the same run's at step 0, in points; KL in nats per "
                       "completion, estimated from the curve's sampled completions; step 0 (KL 0, change 0 by "
                       "construction) is left out of the fits")
    return table


def drift_points_csv(runs: list[RunResult]) -> str:
    """Every point of the scatter, one row each (drift_points.csv)."""
    lines = ["model,trained_on,other_task,method,run,seed,step,kl_to_base,change_greedy,change_sampled"]
    for p in drift_points(runs):
        lines.append(",".join([p.model, p.task, p.other, p.method, p.run, "" if p.seed is None else str(p.seed),
                               str(p.step), f"{p.kl:.6g}", *(f"{p.change[k]:.6g}" if k in p.change else ""
                                                             for k in KINDS)]))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- (c) matched gain


def first_reach(run: RunResult, task: str, other: str, key: str, target: float) -> dict[str, float] | None:
    """Where `run`'s curve first reaches `target` accuracy (`key`) on `task`, linearly interpolated between
    the curve points around it: the step, the other task's accuracy (`held`) and KL to base there. None when
    it never does; its first point when it starts there."""
    previous = None
    for step in sorted(run.curve):
        here = {"acc": value(run, step, task, key), "step": float(step), "held": value(run, step, other, key),
                "kl": value(run, step, task, "kl_to_base")}
        if any(v is None for v in here.values()):
            previous = None
            continue
        if here["acc"] >= target:
            if previous is None:
                return {k: here[k] for k in ("step", "held", "kl")}
            f = (target - previous["acc"]) / (here["acc"] - previous["acc"])  # previous["acc"] < target
            return {k: previous[k] + f * (here[k] - previous[k]) for k in ("step", "held", "kl")}
        previous = here
    return None


def matched_gain_table(runs: list[RunResult]) -> Table | None:
    """For each RL method (every curve method other than SFT) and kind: its final accuracy on the trained
    task (the target), its final other-task accuracy and KL; SFT's at the point its curve first reaches the
    target; and the paired differences by seed."""
    table = Table(title="", columns=["model", "trained on", "other task", "accuracy", "method", "target: final trained acc",
                                     "final other acc", "final KL", "SFT other acc at target", "SFT KL at target",
                                     "SFT step at target", "SFT seeds reaching", "other acc: method − SFT",
                                     "verdict (method forgets less)", "KL: SFT − method"], rows=[])
    used: list[RunResult] = []
    for model, task, other, trained in groups(curve_runs(runs)):
        sft = [r for r in trained if row_key(r) == SFT]
        if not sft:
            continue
        for method in [m for m in methods_of(trained) if m != SFT]:
            members = [r for r in trained if row_key(r) == method]
            used += members + sft
            for kind, key in KINDS.items():
                finals = {r.seed: (value(r, last_step(r), task, key), value(r, last_step(r), other, key),
                                   value(r, last_step(r), task, "kl_to_base")) for r in members}
                finals = {s: v for s, v in finals.items() if None not in v}
                if not finals:
                    continue
                target = statistics.fmean(v[0] for v in finals.values())
                line = [model, task, other, kind, method, interval_text([v[0] for v in finals.values()]),
                        interval_text([v[1] for v in finals.values()]), interval_text([v[2] for v in finals.values()], 1, 3)]
                start = [v for r in sft if (v := value(r, 0, task, key)) is not None]
                if start and target <= statistics.fmean(start):
                    # No gain to match: SFT "reaches" it before training, and comparing with the untrained
                    # model would read as the method forgetting more.
                    table.rows.append(line + ["—"] * 5 + [f"— (the method ends at or below the base's "
                                                          f"{fmt(statistics.fmean(start))}: no gain to match)", "—"])
                    continue
                matched = {r.seed: m for r in sft if (m := first_reach(r, task, other, key, target)) is not None}
                held_diff, _ = paired_difference({s: v[1] for s, v in finals.items()},
                                                 {s: m["held"] for s, m in matched.items()})
                kl_diff, _ = paired_difference({s: m["kl"] for s, m in matched.items()},
                                               {s: v[2] for s, v in finals.items()})
                table.rows.append(line + [
                    interval_text([m["held"] for m in matched.values()]),
                    interval_text([m["kl"] for m in matched.values()], 1, 3),
                    fmt(statistics.fmean(m["step"] for m in matched.values()), 1, 1) if matched else "—",
                    f"{len(matched)} of {len(sft)}",
                    diff_text(held_diff, 100.0), verdict(held_diff), diff_text(kl_diff, 1.0, 3)])
    if not table.rows:
        return None
    protocol = check_protocols(used, "Matched gain")
    table.title = (f"Matched gain (scoring: {protocol}; {SUBSET}): at each method's final accuracy on the trained task, "
                   "what SFT keeps of the other task and how far it has drifted")
    table.notes.append("target = the method's mean final accuracy on the trained task over seeds (a method that ends "
                       "at or below the base has no gain to match); SFT at target = "
                       "where each SFT seed's curve first reaches it, interpolated linearly between curve points (seeds "
                       "that never reach it are left out); mean [95% Student-t interval] (n) over seeds; differences "
                       "are paired by seed (the method's final point minus SFT's matched point, and SFT's KL minus "
                       "the method's), in points and nats")
    return table


def diff_text(interval: Interval, scale: float, digits: int = 2) -> str:
    return "—" if interval.n == 0 else interval.text(scale, digits)


def verdict(interval: Interval) -> str:
    return "—" if interval.n == 0 else interval.verdict


# ------------------------------------------------------------------------- (d) KL and beta curves


def kl_runs(runs: list[RunResult]) -> list[RunResult]:
    """Runs with a KL coefficient schedule (GRPO and its variants: they log train/beta) and a curve."""
    return [r for r in curve_runs(runs) if r.curves.get("train/beta")]


def beta_at(run: RunResult, step: int) -> float | None:
    """beta as logged for the optimizer step `step` is about to take (the last logged one at the end)."""
    logged = dict(run.curves.get("train/beta", []))
    earlier = [s for s in logged if s <= step]
    return logged[max(earlier)] if earlier else None


def kl_curves_table(runs: list[RunResult]) -> Table | None:
    chosen = kl_runs(runs)
    if not chosen:
        return None
    table = Table(title=f"KL to base and beta over training (scoring: {check_protocols(chosen, 'KL curves')}; {SUBSET})",
                  columns=["model", "trained on", "method", "step", "KL to base (nats) [95% interval]", "beta"], rows=[])
    models, _, tasks = index_runs(chosen)
    for model in models:
        for task in tasks:
            mine = [r for r in chosen if r.model == model and r.task == task]
            for method in methods_of(mine):
                members = [r for r in mine if row_key(r) == method]
                for step in sorted({s for r in members for s in r.curve}):
                    kls = [v for r in members if (v := value(r, step, task, "kl_to_base")) is not None]
                    betas = [b for r in members if (b := beta_at(r, step)) is not None]
                    table.rows.append([model, task, method, str(step), interval_text(kls, 1, 3),
                                       fmt(statistics.fmean(betas), 1, 4) if betas else "—"])
    table.notes.append("KL on the trained task's curve items, nats per completion; beta = the KL coefficient the "
                       "schedule gives at that optimizer step (train/beta)")
    return table


# ----------------------------------------------------------------------------- drift claims


def drift_claims_table(runs: list[RunResult]) -> Table | None:
    """At the last curve point, paired by seed: the paper's claims on sampled accuracy, and KL to base of
    GRPO against GRPO-D on the trained task's prompts."""
    chosen = curve_runs(runs)
    table = Table(title="", columns=["model", "claim", "train → scored", "seeds paired",
                                     "difference [95% interval]", "verdict"], rows=[])

    def finals(members: list[RunResult], task: str, key: str) -> dict[int, float]:
        return {r.seed: v for r in members if r.seed is not None
                and (v := value(r, last_step(r), task, key)) is not None}

    models, rows, tasks = index_runs(chosen)
    for model in models:
        def cell(key: str, task: str) -> list[RunResult]:
            return [r for r in chosen if r.model == model and row_key(r) == key and r.task == task]

        for task in tasks:
            scored_on = [task] + other_tasks(chosen, task)
            for claim, better, other, same_task in CLAIMS:
                for scored in ([task] if same_task else scored_on[1:]):
                    interval, seeds = paired_difference(finals(cell(better, task), scored, "acc_sampled"),
                                                        finals(cell(other, task), scored, "acc_sampled"))
                    if seeds:
                        table.rows.append([model, f"{claim}, sampled", task if same_task else f"{task} → {scored}",
                                           ", ".join(map(str, seeds)), interval.text(), interval.verdict])
            interval, seeds = paired_difference(finals(cell("grpo", task), task, "kl_to_base"),
                                                finals(cell("grpo_d", task), task, "kl_to_base"))
            if seeds:
                table.rows.append([model, "GRPO-D stays closer to the base than GRPO (KL: GRPO − GRPO-D, nats)", task,
                                   ", ".join(map(str, seeds)), interval.text(1.0, 3), interval.verdict])
    if not table.rows:
        return None
    table.title = (f"Claims at the end of the curves (scoring: {check_protocols(chosen, 'Drift claims')}; {SUBSET}): "
                   "paired differences over seeds")
    table.notes.append("sampled = mean@k accuracy at temperature 1 at the last curve point, in points; KL to base on "
                       "the trained task's prompts; holds: the 95% interval is above 0, does not hold: below 0, "
                       "inconclusive: it contains 0")
    return table


def frontier_tables(runs: list[RunResult]) -> dict[str, Table]:
    """The curve tables that apply to these runs, in print order (none when no run has a curve)."""
    tables = {"frontier": frontier_table(runs), "forgetting_vs_kl": forgetting_table(runs),
              "matched_gain": matched_gain_table(runs), "kl_curves": kl_curves_table(runs),
              "drift_claims": drift_claims_table(runs)}
    return {name: t for name, t in tables.items() if t is not None}
