"""A grid's jobs: its axes (task, seed, ...) crossed with its named cells, the row zero once.

Pure functions of the sweep's settings: no sweeper, no launcher, no files. The cell sweeper
(src/hydra_plugins/othink_mr1_sweeper) launches these jobs, and the report reads which jobs a sweep planned
from its multirun.yaml through the same functions, so the two never disagree on what a grid is.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Dict, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException


class GridError(HydraException):
    """A sweep's axes or cells that make no grid; Hydra prints it as the sweep's error."""


def seed_values(values: List[str]) -> List[str]:
    """`seeds=3` -> 1, 2, 3; `seeds=1,5` (a sweep) -> 1, 5."""
    if len(values) == 1:
        try:
            count = int(values[0])
        except ValueError:
            raise GridError(f"seeds={values[0]}: expected a number of seeds or a list (seeds=1,5)") from None
        if count < 1:
            raise GridError(f"seeds={count}: must be at least 1")
        return [str(s) for s in range(1, count + 1)]
    return values


def axes(overrides: List[Override]) -> "OrderedDict[str, List[str]]":
    """Each swept key's `key=value` strings, in order; a later override of a key replaces it. `seeds=N`
    becomes the seed axis 1..N."""
    out: "OrderedDict[str, List[str]]" = OrderedDict()
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise GridError(f"{key}: a cell sweep takes lists and ranges, not intervals")
            values = [str(v) for v in override.sweep_string_iterator()]
        else:
            values = [override.get_value_element_as_str()]
        if key == "seeds":
            key, values = "seed", seed_values(values)
        out[key] = [f"{key}={v}" for v in values]
    return out


def parse(arguments: List[str]) -> List[Override]:
    return OverridesParser.create().parse_overrides(arguments)


def jobs(grid_axes: "OrderedDict[str, List[str]]", cells: Dict[str, List[str]]) -> List[List[str]]:
    """Every (axes combination) x (cell) job, in order, duplicates dropped. A cell whose overrides hold
    `mode=eval` is the row zero: it keeps the first value of the task axis (which decides the eval tasks) and
    drops the seed, so it runs once. Each job ends with the cell's overrides and `cell=<name>`."""
    first_task = grid_axes["task"][0] if "task" in grid_axes else None
    out, seen = [], set()
    for combo in itertools.product(*grid_axes.values()):
        for name, cell in cells.items():
            job = list(combo)
            if "mode=eval" in cell:
                job = [o for o in job if not o.startswith(("seed=", "task="))]
                if first_task:
                    job.insert(0, first_task)
            job = job + list(cell) + [f"cell={name}"]
            if tuple(job) not in seen:
                seen.add(tuple(job))
                out.append(job)
    return out


def planned_jobs(sweeper: Dict[str, Any], task_overrides: List[str]) -> List[List[str]]:
    """The jobs a launched sweep planned, from what its multirun.yaml holds: the sweeper's `params` and
    `cells`, then the command line's overrides of the axes (task, seed, seeds)."""
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += [o for o in task_overrides if o.split("=")[0] in ("task", "seed", "seeds")]
    cells = {name: [str(o) for o in overrides] for name, overrides in sweeper["cells"].items()}
    return jobs(axes(parse(arguments)), cells)


def _settings(job: List[str]) -> "OrderedDict[str, str]":
    out: "OrderedDict[str, str]" = OrderedDict()
    for override in job:
        key, _, value = override.partition("=")
        out[key] = value
    return out


def shared_folder_error(folder: str, first: List[str], second: List[str]) -> GridError:
    """Two jobs whose run folders are one: the second would be skipped as the first's finished run (or take
    the first's live folder). Names both cells, the settings that differ and how to tell them apart."""
    a, b = _settings(first), _settings(second)
    differ = [f"{k}: {a.get(k, '(default)')} / {b.get(k, '(default)')}" for k in list(a) + [k for k in b if k not in a]
              if k != "cell" and a.get(k) != b.get(k)]
    return GridError(
        f"cells '{a.get('cell')}' and '{b.get('cell')}' would share the run folder {folder}: a run's name holds "
        f"its task, method, KL schedule, model, seed and tag, not {', '.join(d.split(':')[0] for d in differ) or 'their settings'}"
        f" ({'; '.join(differ) or 'the same overrides'}). Give one of them tag=<name> in its cell's overrides, "
        "or drop one of the two")
