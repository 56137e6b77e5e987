"""The paper's tables from RunResults: Table 1 (same task), its headline (GRPO-D's relative gains over
SFT and GRPO beside the paper's), the cross-task table, ablation tables and a per-run listing: their rows
and values, as Tables (report/render.py writes them out as Markdown, CSV and LaTeX).

Accuracy is shown in percent, mean +- sample std over seeds with n. Cells that failed, never finished
or never started are shown as such (with how many), never dropped. Relative change is the paper's
(x - y) / y on the means (report/relative.py).

Every accuracy carries the scoring protocol it was measured under (runs.py: "r1v", the paper's, or
"normalized"). A table averages accuracies of one protocol only and says which in its title; one whose
accuracies were scored under different protocols is refused (MixedProtocolsError), since the two
scorers do not give comparable numbers. Likewise every finished run must have been scored on one split
(test, or validation for a tuning phase); a report that would mix them is refused (MixedSplitsError).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..results import DEFAULT_SPLIT, LEGACY_PROTOCOL
from .intervals import CLAIMS, mean_interval, paired_difference
from .paper import CROSS_TASK_2B, STATED_MODEL, STATED_RELATIVE, TABLE1
from .relative import format_relative, relative_change
from .render import Table
from .runs import BASE_ROW, PAPER_PROTOCOL, RunResult

# The paper's row order in Table 1; other rows (ablation cells, other schedules) follow in sweep order.
PAPER_ROWS = (BASE_ROW, "grpo", "sft", "grpo_d")
# Our task names -> the paper's columns.
PAPER_TASK = {"counting": "counting", "clevr_count": "counting", "geometry": "geometry", "geoqa": "geometry"}
PAPER_DEFAULT_MODEL = "qwen2_vl_2b_instruct"
NOT_FINISHED = ("failed", "terminated", "unfinished", "missing")


class IncomparableRunsError(ValueError):
    """A report would put side by side accuracies that are not comparable; the message says why."""


class MixedProtocolsError(IncomparableRunsError):
    """A table would average accuracies scored under different protocols; the message names them and
    runs of each."""


class MixedSplitsError(IncomparableRunsError):
    """The finished runs were scored on different splits (test and validation); the message names a run
    of each."""


@dataclass
class Stat:
    """Accuracies of one table cell over seeds, plus the runs that did not finish."""

    values: list[float] = field(default_factory=list)
    not_finished: dict[str, int] = field(default_factory=dict)
    # (run, eval task) behind each value, for the protocol check.
    scored: list[tuple[RunResult, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def text(self, intervals: bool = False) -> str:
        """mean ± std (n), or with `intervals` mean [95% interval] (n)."""
        status = ", ".join(f"{count} {what}" for what, count in sorted(self.not_finished.items()))
        if not self.values:
            return status or "missing"
        if intervals and self.n > 1:
            interval = mean_interval(self.values)
            spread = f" [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"
        else:
            spread = f" ± {100 * self.std:.2f}" if self.n > 1 else ""
        return f"{100 * self.mean:.2f}{spread} (n={self.n}{', ' + status if status else ''})"


# ------------------------------------------------------------------------------------ helpers


def ordered(items: list[str], first: tuple[str, ...] = ()) -> list[str]:
    """Unique items, `first` ones first in that order, the rest in order of appearance."""
    seen = list(dict.fromkeys(items))
    return [x for x in first if x in seen] + [x for x in seen if x not in first]


def row_key(run: RunResult) -> str:
    """The row a run belongs to: base for any evaluation of the starting model, else its cell (sweeps)
    or its method (plain runs, with their tag)."""
    if run.mode == "eval":
        return BASE_ROW
    return run.label + (f"_{run.tag}" if run.tag and not run.cell else "")


def stat(runs: list[RunResult], task: str) -> Stat:
    """Accuracy on `task` over the given runs (the seeds of one cell)."""
    s = Stat()
    for run in runs:
        if run.status == "finished" and task in run.accuracy:
            s.values.append(float(run.accuracy[task]))
            s.scored.append((run, task))
        elif run.status in NOT_FINISHED:
            s.not_finished[run.status] = s.not_finished.get(run.status, 0) + 1
    return s


def index_runs(runs: list[RunResult]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Models, row keys per model (paper order first), and the trained tasks, in a stable order."""
    models = ordered([r.model for r in runs])
    rows = {m: ordered([row_key(r) for r in runs if r.model == m], PAPER_ROWS) for m in models}
    tasks = ordered([r.task for r in runs if r.task])
    return models, rows, tasks


def row_runs(runs: list[RunResult], model: str, key: str, task: str | None = None) -> list[RunResult]:
    """The runs of one row; the base row (an evaluation) serves every trained task."""
    return [r for r in runs if r.model == model and row_key(r) == key
            and (r.mode == "eval" or task is None or r.task == task)]


def cross_pairs(runs: list[RunResult]) -> list[tuple[str, str]]:
    """(trained task, another scored task) pairs, in a stable order."""
    _, _, tasks = index_runs(runs)
    eval_tasks = ordered([t for r in runs for t in r.accuracy] + tasks)
    return [(t, e) for t in tasks for e in eval_tasks if e != t]


def protocol_of(run: RunResult, task: str) -> str:
    """The protocol `run`'s accuracy on `task` was scored under (legacy runs: normalized)."""
    return run.protocol.get(task) or LEGACY_PROTOCOL


def table_protocol(name: str, cells: list[tuple[str, Stat]]) -> str | None:
    """The one protocol of every accuracy a table averages ((cell name, Stat) pairs); None when it has
    no accuracy at all. Raises MixedProtocolsError, naming the protocols and a run of each (from the
    cell that mixes them, if one does), when there is more than one."""
    by_protocol: dict[str, list[tuple[str, RunResult, str]]] = {}
    cell_protocols: dict[str, set[str]] = {}
    for cell, s in cells:
        for run, task in s.scored:
            protocol = protocol_of(run, task)
            by_protocol.setdefault(protocol, []).append((cell, run, task))
            cell_protocols.setdefault(cell, set()).add(protocol)
    if len(by_protocol) <= 1:
        return next(iter(by_protocol), None)
    mixed_cell = next((c for c, p in cell_protocols.items() if len(p) > 1), None)
    where = f"cell {mixed_cell!r} would average" if mixed_cell else "its cells would compare"

    def example(scored: list[tuple[str, RunResult, str]]) -> str:
        _, run, task = next((x for x in scored if x[0] == mixed_cell), scored[0])
        return f"run {run.run_name!r} on {task}"

    each = "; ".join(f"{protocol}: {len(scored)} result(s), e.g. {example(scored)}"
                     for protocol, scored in sorted(by_protocol.items()))
    raise MixedProtocolsError(
        f"{name}: {where} accuracies scored under different protocols ({', '.join(sorted(by_protocol))}), "
        f"which do not give comparable numbers. {each}. Re-evaluate the runs under one protocol, or report "
        f"them separately (one folder or --group each). Runs with no recorded protocol read as "
        f"{LEGACY_PROTOCOL!r}.")


def labelled(head: str, rest: str, protocol: str | None, with_paper: bool) -> str:
    """`head (scoring: P): rest`, and where the table sits beside the paper's numbers under another
    protocol, that the paper's use r1v."""
    scoring = f"scoring: {protocol}" if protocol else "scoring: none, no finished run"
    if with_paper and protocol and protocol != PAPER_PROTOCOL:
        scoring += f"; the paper's numbers use {PAPER_PROTOCOL}"
    return f"{head} ({scoring}): {rest}"


def _paper_model(model: str) -> str:
    return model if model in TABLE1 else PAPER_DEFAULT_MODEL


def _mark_best(table: Table, column: int, means: dict[int, float]) -> None:
    finite = {i: v for i, v in means.items() if not math.isnan(v)}
    if finite:
        top = max(finite.values())
        table.best |= {(i, column) for i, v in finite.items() if v == top}


# ------------------------------------------------------------------------------------- tables


def same_task_table(runs: list[RunResult], paper: bool = False, intervals: bool = False) -> Table | None:
    """Table 1: accuracy on the trained task, per model and row; the best per model and column marked."""
    models, rows, tasks = index_runs(runs)
    if not tasks:
        return None
    ablation = any(k not in PAPER_ROWS for m in models for k in rows[m])
    columns = ["model", "cell" if ablation else "method"]
    for task in tasks:
        columns.append(task)
        if paper:
            columns += [f"{task} (paper)", f"{task} Δ"]
    first_trained = {m: next((k for k in rows[m] if k != BASE_ROW), None) for m in models}
    if ablation:
        columns += [f"{t} vs {first_trained[models[0]]}" for t in tasks]
    head, rest = ("Ablation", "accuracy (%) on the trained task") if ablation else (
        "Table 1", "accuracy (%) on the trained task (same-task)")
    table = Table(title=head, columns=columns, rows=[])
    cells: list[tuple[str, Stat]] = []
    for model in models:
        means: dict[int, dict[int, float]] = {}
        for key in rows[model]:
            line, i = [model, key], len(table.rows)
            for task in tasks:
                s = stat(row_runs(runs, model, key, task), task)
                cells.append((f"{model} {key} {task}", s))
                means.setdefault(len(line), {})[i] = s.mean
                line.append(s.text(intervals))
                if paper:
                    published = TABLE1[_paper_model(model)].get(key, {}).get(PAPER_TASK.get(task, ""))
                    line.append("—" if published is None else f"{published:.2f}")
                    line.append("—" if published is None or model not in TABLE1 or not s.values
                                else f"{100 * s.mean - published:+.2f}")
            if ablation:
                for task in tasks:
                    ref = stat(row_runs(runs, model, first_trained[model], task), task).mean
                    line.append(format_relative(relative_change(stat(row_runs(runs, model, key, task), task).mean, ref))
                                if key != BASE_ROW else "—")
            table.rows.append(line)
        for column, column_means in means.items():
            _mark_best(table, column, column_means)
    table.title = labelled(head, rest, table_protocol(head, cells), paper)
    table.notes.append(("mean [95% Student-t interval] over seeds" if intervals else "mean ± sample std over seeds")
                       + ", n = finished runs; best per model and column in bold")
    if paper:
        table.notes.append(f"paper: OThink-MR1 Table 1 for the same model, else {PAPER_DEFAULT_MODEL}; "
                           "Δ = ours − paper in points, only for the same model")
    return table


def paper_gain(model: str, task: str, baseline: str) -> str:
    """The paper's GRPO-D vs `baseline` relative gain on `task`: the percentage its text states (its
    Qwen2-VL-2B headline), else the one its Table 1 implies, marked "(derived)"; "—" for a model or task
    the paper does not have."""
    paper_task = PAPER_TASK.get(task)
    if model not in TABLE1 or paper_task is None:
        return "—"
    stated = STATED_RELATIVE.get((f"grpo_d vs {baseline}", paper_task)) if model == STATED_MODEL else None
    if stated is not None:
        return f"{stated:+.2f}%"
    published = TABLE1[model]
    return format_relative(relative_change(published["grpo_d"][paper_task], published[baseline][paper_task])) + " (derived)"


def relative_gains_table(runs: list[RunResult]) -> Table | None:
    """The paper's headline, ours beside it: GRPO-D's relative gain over SFT and over GRPO on the trained
    task, (x − y) / y on the means over seeds, per model and task, with the paper's value for the model."""
    models, rows, tasks = index_runs(runs)
    models = [m for m in models if "grpo_d" in rows[m]]
    if not models or not tasks:
        return None
    columns = ["model", "task", "GRPO-D vs SFT", "paper", "GRPO-D vs GRPO", "paper", "n (GRPO-D, SFT, GRPO)"]
    head, rest = "Same-task relative gains", "GRPO-D vs SFT and vs GRPO on the trained task"
    table = Table(title=head, columns=columns, rows=[])
    cells: list[tuple[str, Stat]] = []
    for model in models:
        for task in tasks:
            means = {key: stat(row_runs(runs, model, key, task), task) for key in ("grpo_d", "sft", "grpo")}
            if not any(s.values or s.not_finished for s in means.values()):
                continue  # no run of this model trained on this task
            cells += [(f"{model} {key} {task}", s) for key, s in means.items()]
            line = [model, task]
            for baseline in ("sft", "grpo"):
                line += [format_relative(relative_change(means["grpo_d"].mean, means[baseline].mean)),
                         paper_gain(model, task, baseline)]
            line.append(", ".join(str(s.n) for s in means.values()))
            table.rows.append(line)
    table.title = labelled(head, rest, table_protocol(head, cells), True)
    table.notes.append("ours: (x − y) / y on the mean accuracy over seeds (n finished runs each), as the paper "
                       "defines it; n/a where a mean is missing")
    table.notes.append("paper: the gains its text states for Qwen2-VL-2B; (derived) = computed from its Table 1, "
                       "which is all it gives for this model; — = a model the paper does not have")
    return table


def cross_task_table(runs: list[RunResult], paper: bool = False, intervals: bool = False) -> Table | None:
    """Train on one task, evaluate on another: accuracy and the relative change vs base and vs SFT."""
    models, rows, _ = index_runs(runs)
    pairs = cross_pairs(runs)
    if not pairs:
        return None
    has_sft = any("sft" in rows[m] for m in models)
    columns = ["model", "train → eval", "method", "accuracy", "vs base"] + (["vs SFT"] if has_sft else [])
    if paper:
        columns += ["paper", "paper vs base"]
    table = Table(title="Cross-task", columns=columns, rows=[])
    cells: list[tuple[str, Stat]] = []
    for model in models:
        for train_task, eval_task in pairs:
            base = stat(row_runs(runs, model, BASE_ROW), eval_task)
            sft = stat(row_runs(runs, model, "sft", train_task), eval_task)
            column_means: dict[int, float] = {}
            for key in rows[model]:
                s = base if key == BASE_ROW else stat(row_runs(runs, model, key, train_task), eval_task)
                cells.append((f"{model} {key} {train_task} → {eval_task}", s))
                i = len(table.rows)
                column_means[i] = s.mean
                line = [model, f"{train_task} → {eval_task}", key, s.text(intervals),
                        "—" if key == BASE_ROW else format_relative(relative_change(s.mean, base.mean))]
                if has_sft:
                    line.append("—" if key in (BASE_ROW, "sft") else format_relative(relative_change(s.mean, sft.mean)))
                if paper:
                    published = CROSS_TASK_2B.get((PAPER_TASK.get(train_task), PAPER_TASK.get(eval_task)), {})
                    value, base_value = published.get(key), published.get(BASE_ROW)
                    line += ["—" if value is None else f"{value:.2f}",
                             "—" if value is None or key == BASE_ROW else format_relative(relative_change(value, base_value))]
                table.rows.append(line)
            _mark_best(table, 3, column_means)
    table.title = labelled("Cross-task", "accuracy (%) on the task not trained on",
                           table_protocol("Cross-task", cells), paper)
    table.notes.append("relative change = (x − y) / y on the means, as the paper defines it; best per pair in bold")
    if paper:
        table.notes.append("paper: Qwen2-VL-2B values implied by the paper's stated relative changes (it prints no "
                           "absolute cross-task numbers)")
    return table


def seed_accuracies(runs: list[RunResult], task: str) -> dict[int, float]:
    """seed -> accuracy on `task` of the finished runs among `runs` (one cell)."""
    return {r.seed: float(r.accuracy[task]) for r in runs
            if r.status == "finished" and r.seed is not None and task in r.accuracy}


def paired_claims_table(runs: list[RunResult]) -> Table | None:
    """The paper's claims (intervals.CLAIMS) as paired differences over seeds, per model and trained task,
    with their 95% intervals and a verdict; claims whose cells this grid lacks are left out."""
    models, rows, _ = index_runs(runs)
    table = Table(title="Claims", columns=["model", "claim", "train → scored", "seeds paired",
                                           "difference (points) [95% interval]", "verdict"], rows=[])
    cells: list[tuple[str, Stat]] = []
    for model in models:
        for train_task, scored in [(t, t) for t in ordered([r.task for r in runs if r.task])] + cross_pairs(runs):
            for claim, better, other, same_task in CLAIMS:
                if same_task != (train_task == scored) or better not in rows[model] or other not in rows[model]:
                    continue
                sides = [row_runs(runs, model, key, train_task) for key in (better, other)]
                cells += [(f"{model} {key} {train_task} → {scored}", stat(side, scored)) for key, side in zip((better, other), sides)]
                interval, seeds = paired_difference(*(seed_accuracies(side, scored) for side in sides))
                if not seeds:
                    continue
                table.rows.append([model, claim, train_task if same_task else f"{train_task} → {scored}",
                                   ", ".join(map(str, seeds)), interval.text(), interval.verdict])
    if not table.rows:
        return None
    table.title = labelled("Claims", "paired differences over seeds", table_protocol("Claims", cells), False)
    table.notes.append("difference = first − second cell, seed by seed (same seed, same data order), in points; "
                       "95% Student-t interval of its mean; holds: the interval is above 0, does not hold: below 0, "
                       "inconclusive: it contains 0")
    return table


def runs_table(runs: list[RunResult]) -> Table:
    """Every run: status, time, device-hours (seconds x devices; GPU-hours on GPU runs) and accuracy
    on every eval task (what each cell cost)."""
    models, rows, _ = index_runs(runs)
    eval_tasks = ordered([t for r in runs for t in r.accuracy])
    table = Table(title="Runs", columns=["run", "cell", "task", "seed", "status", "train s", "total s", "device h",
                                         *eval_tasks, "scoring"], rows=[])
    order = {(m, k): i for i, (m, k) in enumerate((m, k) for m in models for k in rows[m])}
    for run in sorted(runs, key=lambda r: (order[(r.model, row_key(r))], r.task or "", r.seed or 0, r.run_name)):
        line = [run.run_name, row_key(run), run.task or "—", "—" if run.seed is None or run.mode == "eval" else str(run.seed),
                run.status + (f": {run.error}" if run.error else ""),
                "—" if run.train_seconds is None else f"{run.train_seconds:.1f}",
                "—" if run.seconds is None else f"{run.seconds:.1f}",
                "—" if run.seconds is None or run.devices is None else f"{run.seconds * run.devices / 3600:.3f}"]
        line += [f"{100 * run.accuracy[t]:.2f}" if t in run.accuracy else "—" for t in eval_tasks]
        protocols = {t: protocol_of(run, t) for t in run.accuracy}
        line.append("—" if not protocols else next(iter(protocols.values())) if len(set(protocols.values())) == 1
                    else ", ".join(f"{t}: {p}" for t, p in protocols.items()))
        table.rows.append(line)
    table.notes.append(f"scoring: the protocol each run's accuracies were scored under ({PAPER_PROTOCOL} is the "
                       f"paper's; runs that recorded none read as {LEGACY_PROTOCOL})")
    return table


def eval_split_of(runs: list[RunResult]) -> str:
    """The one split every finished run was scored on (test when none finished). Raises MixedSplitsError
    naming a run of each split otherwise: a tuning phase's validation scores beside test scores would
    read as one grid."""
    by_split: dict[str, list[RunResult]] = {}
    for run in runs:
        if run.status == "finished":
            by_split.setdefault(run.eval_split, []).append(run)
    if len(by_split) > 1:
        each = "; ".join(f"{split}: {len(rs)} run(s), e.g. {rs[0].run_name!r}" for split, rs in sorted(by_split.items()))
        raise MixedSplitsError(f"the runs were scored on different splits ({each}). Report each split from its "
                               f"own folder (a tuned sweep keeps its validation runs under tune/).")
    return next(iter(by_split), DEFAULT_SPLIT)


def build_tables(runs: list[RunResult], paper: bool = False, intervals: bool = False) -> dict[str, Table]:
    """name -> table, in print order; tables that do not apply (no trained runs, one task) are left out.
    `intervals`: 95% intervals over seeds in the accuracy tables, and the paper's claims as paired
    differences. Raises MixedProtocolsError when a table would average accuracies scored under different
    protocols, MixedSplitsError when the runs were scored on different splits; tables of validation
    scores say so in their titles."""
    split = eval_split_of(runs)
    tables = {"same_task": same_task_table(runs, paper, intervals), "relative_gains": relative_gains_table(runs),
              "cross_task": cross_task_table(runs, paper, intervals),
              "claims": paired_claims_table(runs) if intervals else None, "runs": runs_table(runs)}
    tables = {name: t for name, t in tables.items() if t is not None}
    from .frontier import frontier_tables  # it builds on this module's helpers

    tables.update(frontier_tables(runs))
    if split != DEFAULT_SPLIT:
        for table in tables.values():
            table.title += f" [{split} split]"
    return tables
