"""The one entry point: `python run.py [group=option ...] [key=value ...]` (Hydra).

    python run.py                                   # GRPO-D of tiny_base on synthetic counting
    python run.py method=sft task=geometry          # SFT on another task
    python run.py kl=constant method.lr=5e-5        # plain GRPO, another lr
    python run.py mode=eval model=tiny_base         # score a model, no training
    python run.py -m seed=1,2,3                     # a multirun
    python run.py sweeps=paper_grid                 # a grid of cells (sweeps/), no -m needed
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The project root anchors paths.root_dir and the sweeps/ config group, wherever run.py is called from.
os.environ.setdefault("OTHINK_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from othink_mr1.hydra_setup import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from hydra.types import RunMode

    from othink_mr1.naming import run_identity
    from othink_mr1.loggers import WANDB_RUN_ID_FILE, log_failed_run
    from othink_mr1.runner import run
    from othink_mr1.utils.errors import USER_ERRORS
    from othink_mr1.utils.run_dir import FINISHED_MARKER, record_failure

    run_dir = Path(cfg.paths.run_dir)
    overrides = list(HydraConfig.get().overrides.task)
    outcome = {"run_dir": str(run_dir), "cell": cfg.cell}
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            run(cfg, overrides=overrides)
        except USER_ERRORS as exc:
            # Bad input: one clear line naming the key, file, row or folder; no traceback.
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        return {**outcome, "status": "finished"}

    # One cell of a sweep: a finished cell is skipped (re-launching fills only the gaps), and a failure
    # is recorded in the cell's error.json while the other cells go on.
    if (run_dir / FINISHED_MARKER).exists():
        print(f"[sweep] skip {run_dir.name}: finished", flush=True)
        return {**outcome, "status": "skipped"}
    try:
        run(cfg, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - any failure of one cell must not stop the grid
        error_file = record_failure(run_dir, exc, overrides, run_identity(cfg))
        if cfg.logger.wandb and not (run_dir / WANDB_RUN_ID_FILE).exists():
            log_failed_run(cfg, run_dir, f"{type(exc).__name__}: {exc}")
        print(f"[sweep] FAILED {run_dir.name}: {exc} (details in {error_file})", file=sys.stderr, flush=True)
        return {**outcome, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {**outcome, "status": "finished"}


if __name__ == "__main__":
    main()
