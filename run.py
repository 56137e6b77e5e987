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


def stop_when_make_stops() -> None:
    """`make run` sent SIGTERM ends without passing it on, leaving the run going with nobody watching. Under
    make (MAKELEVEL is set), ask Linux to send this process SIGTERM when its parent ends (PR_SET_PDEATHSIG),
    so the run checkpoints and stops as if it had been signalled itself."""
    if os.environ.get("MAKELEVEL") and sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Exit status: 0 finished; 2 bad input (one `error:` line naming the key, file, row or folder); 128 + N
    when stopped by signal N (143 SIGTERM, 130 SIGINT; error.json says how to go on); 1 anything else (a
    traceback; error.json holds it). A sweep exits with its number of failed cells (sweeps/README.md)."""
    from hydra.types import RunMode

    from othink_mr1.naming import run_identity
    from othink_mr1.loggers import WANDB_RUN_ID_FILE, log_failed_run
    from othink_mr1.runner import run
    from othink_mr1.utils.errors import USER_ERRORS, RunExistsError, RunLockedError
    from othink_mr1.utils.preemption import Terminated
    from othink_mr1.utils.run_dir import FINISHED_MARKER, config_differences, record_failure

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
        except Terminated as exc:
            print(terminated_message(exc, run_dir), file=sys.stderr, flush=True)
            sys.exit(exc.exit_code)
        return {**outcome, "status": "finished"}

    # One cell of a sweep: a finished cell is skipped (re-launching fills only the gaps) when it is this
    # cell's run; a failure is recorded in the cell's error.json while the other cells go on.
    if (run_dir / FINISHED_MARKER).exists():
        differences = config_differences(run_dir, cfg)
        if not differences:
            print(f"[sweep] skip {run_dir.name}: finished", flush=True)
            return {**outcome, "status": "skipped"}
        error = (f"{run_dir} holds a finished run of another config ({'; '.join(differences)}): not this cell's "
                 "results, so it is neither skipped nor overwritten. Give the cell its own run name (tag=...)")
        print(f"[sweep] FAILED {run_dir.name}: {error}", file=sys.stderr, flush=True)
        return {**outcome, "status": "failed", "error": f"RunExistsError: {error}"}
    try:
        run(cfg, overrides=overrides)
    except Terminated as exc:
        # Stop the grid: a signal means stop, not "go on with the next cell". error.json is written.
        print(terminated_message(exc, run_dir), file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    except (RunLockedError, RunExistsError) as exc:
        # The folder is another run's (live, or finished): nothing is written into it.
        print(f"[sweep] FAILED {run_dir.name}: {exc}", file=sys.stderr, flush=True)
        return {**outcome, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - any failure of one cell must not stop the grid
        # The runner records failures in the folder it holds; one before that (a bad config) is recorded here.
        error_file = getattr(exc, "error_record", None) or record_failure(run_dir, exc, overrides, run_identity(cfg))
        if cfg.logger.wandb and not (run_dir / WANDB_RUN_ID_FILE).exists():
            log_failed_run(cfg, run_dir, f"{type(exc).__name__}: {exc}")
        print(f"[sweep] FAILED {run_dir.name}: {exc} (details in {error_file})", file=sys.stderr, flush=True)
        return {**outcome, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {**outcome, "status": "finished"}


def terminated_message(exc, run_dir: Path) -> str:
    """What a run stopped by a signal prints last: what was kept and how to go on (also in its error.json)."""
    import json

    from othink_mr1.utils.run_dir import ERROR_RECORD

    record = run_dir / ERROR_RECORD
    how = json.loads(record.read_text()).get("resume") if record.exists() else None
    kept = (f"{exc.checkpoint} holds step {exc.step}" if exc.checkpoint else "no checkpoint was written")
    return f"[run] {exc} ({run_dir}): {kept}. To go on: {how or 'run the same command again'}"


if __name__ == "__main__":
    stop_when_make_stops()
    main()
