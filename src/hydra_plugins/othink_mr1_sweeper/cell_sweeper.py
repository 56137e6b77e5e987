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
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobStatus
from hydra.errors import HydraException

log = logging.getLogger(__name__)

MAX_EXIT_CODE = 100


def seed_values(values: List[str]) -> List[str]:
    """`seeds=3` -> 1, 2, 3; `seeds=1,5` (a sweep) -> 1, 5."""
    if len(values) == 1:
        try:
            count = int(values[0])
        except ValueError:
            raise HydraException(f"seeds={values[0]}: expected a number of seeds or a list (seeds=1,5)") from None
        if count < 1:
            raise HydraException(f"seeds={count}: must be at least 1")
        return [str(s) for s in range(1, count + 1)]
    return values


class CellSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 cells: Optional[Dict[str, List[str]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if not cells:
            # Also what selecting the grids' shared base alone (sweeps=_base/grid) ends in: it has no cells.
            raise HydraException("hydra.sweeper.cells is empty: a cell sweep needs at least one cell (pick a grid, "
                                 "sweeps=NAME for sweeps/NAME.yaml; sweeps/_base/grid.yaml is only their shared base)")
        self.cells = {name: [str(o) for o in overrides] for name, overrides in cells.items()}

    def axes(self, overrides: List[Override]) -> "OrderedDict[str, List[str]]":
        """Each swept key's `key=value` strings, in order; a later override of a key replaces it."""
        axes: "OrderedDict[str, List[str]]" = OrderedDict()
        for override in overrides:
            key = override.get_key_element()
            if override.is_sweep_override():
                if not override.is_discrete_sweep():
                    raise HydraException(f"{key}: {type(self).__name__} takes lists and ranges, not intervals")
                values = [str(v) for v in override.sweep_string_iterator()]
            else:
                values = [override.get_value_element_as_str()]
            if key == "seeds":
                key, values = "seed", seed_values(values)
            axes[key] = [f"{key}={v}" for v in values]
        return axes

    def jobs(self, overrides: List[Override]) -> List[List[str]]:
        """Every (axes combination) x (cell) job, row zero once, duplicates dropped, order kept."""
        axes = self.axes(overrides)
        first_task = axes["task"][0] if "task" in axes else None
        jobs, seen = [], set()
        for combo in itertools.product(*axes.values()):
            for name, cell in self.cells.items():
                job = list(combo)
                if "mode=eval" in cell:
                    job = [o for o in job if not o.startswith(("seed=", "task="))]
                    if first_task:
                        job.insert(0, first_task)
                job = job + cell + [f"cell={name}"]
                if tuple(job) not in seen:
                    seen.add(tuple(job))
                    jobs.append(job)
        return jobs

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        jobs = self.jobs(overrides)
        log.info(f"[sweep] {len(jobs)} cells")
        return [list(chunk) for chunk in self.split_overrides_to_chunks(jobs, max_batch_size)]

    def sweep(self, arguments: List[str]) -> Any:
        returns = super().sweep(arguments)
        outcomes: Counter = Counter()
        failed = []
        for batch in returns:
            for job in batch:
                if job.status == JobStatus.FAILED:  # raised past run.py (a launcher or process fault)
                    value = {"status": "failed", "run_dir": job.working_dir, "error": repr(job._return_value)}
                else:
                    value = job.return_value
                status = value.get("status", "finished") if isinstance(value, dict) else "finished"
                outcomes[status] += 1
                if status == "failed":
                    failed.append(f"{value.get('run_dir')} ({value.get('error')})")
        summary = ", ".join(f"{n} {s}" for s, n in sorted(outcomes.items()))
        print(f"[sweep] {sum(outcomes.values())} cells: {summary}", flush=True)
        for line in failed:
            print(f"[sweep] failed: {line}", flush=True)
        if failed:
            raise SystemExit(min(len(failed), MAX_EXIT_CODE))
        return returns
