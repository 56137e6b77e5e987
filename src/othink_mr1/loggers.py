"""The run's loggers: a CSV log always, and a wandb run per cell when `logger.wandb` is true.

wandb never decides whether a run succeeds: online without credentials or a reachable server logs
offline (one warning), a finished or failed run is always closed, and a cell that failed before its
run started still gets one, marked failed, so a report built from wandb matches the run directories.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import netrc
import os
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .naming import run_identity

log = logging.getLogger(__name__)

WANDB_DEFAULT_HOST = "https://api.wandb.ai"
WANDB_RUN_ID_FILE = "wandb_run_id"


def wandb_tags(identity: dict[str, Any]) -> list[str]:
    """key:value tags the wandb UI filters on: task, method, kl, seed (and model, mode, cell)."""
    keys = ("task", "method", "kl", "seed", "model", "cell") if identity["mode"] == "train" else ("mode", "model", "cell")
    return [f"{k}:{identity[k]}" for k in keys if identity.get(k) is not None]


@functools.lru_cache(maxsize=None)
def resolve_wandb_mode(mode: str) -> str:
    """`logger.mode`, except that online without credentials or without a reachable server becomes
    offline, with one warning per process: wandb would otherwise fail the run at its first log call or
    wait on the network, and the local results must never depend on it. `wandb sync` uploads later."""
    env_mode = os.environ.get("WANDB_MODE")
    if mode != "online" or env_mode in ("offline", "disabled", "dryrun"):
        return env_mode if mode == "online" and env_mode else mode
    base_url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)
    host = urllib.parse.urlparse(base_url).hostname or base_url
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
            key = entry[2] if entry else None
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        log.warning("logger.mode=online but no wandb credentials for %s (WANDB_API_KEY or `wandb login`): logging "
                    "offline instead; `wandb sync <run_dir>/wandb/offline-run-*` uploads it later", host)
        return "offline"
    parsed = urllib.parse.urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        log.warning("logger.mode=online but %s:%s cannot be reached (%s): logging offline instead; `wandb sync` "
                    "uploads it later", host, port, exc)
        return "offline"
    return "online"


def wandb_run_args(cfg: DictConfig) -> dict[str, Any]:
    """One wandb run per cell: group = the sweep (logger.group overrides it), job_type = the method
    (eval for the base model), key:value tags."""
    identity = run_identity(cfg)
    return dict(name=cfg.run_name, project=cfg.logger.project, entity=cfg.logger.entity,
                group=cfg.logger.group or cfg.sweep or None, job_type=identity["method"] or "eval",
                tags=wandb_tags(identity) + list(cfg.logger.tags), mode=resolve_wandb_mode(cfg.logger.mode))


def build_loggers(cfg: DictConfig, run_dir: Path, resumes: int, eval_tasks: list[str]) -> list[Any]:
    from pytorch_lightning.loggers import CSVLogger

    identity = run_identity(cfg)
    # Lightning's CSV writer deletes an existing metrics.csv: a resumed attempt writes beside it.
    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="csv", version=f"resume_{resumes}" if resumes else "")]
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        id_file = run_dir / WANDB_RUN_ID_FILE
        run_id = id_file.read_text().strip() if resumes and id_file.exists() else None
        wandb_logger = WandbLogger(save_dir=str(run_dir), id=run_id, resume="allow" if run_id else None,
                                   **wandb_run_args(cfg))
        if rank_zero_only.rank == 0:
            id_file.write_text(str(wandb_logger.version))
        loggers.append(wandb_logger)
    # The identity keys at the top level (the wandb UI groups and filters on them), and the resolved
    # config as a plain nested dict.
    params = {**identity, "eval_tasks": list(eval_tasks), "config": OmegaConf.to_container(cfg, resolve=True)}
    for lg in loggers:
        lg.log_hyperparams(params)
    return loggers


def write_wandb_summary(loggers: list[Any], results: dict[str, Any]) -> None:
    """eval/<task>/acc for every eval task (and the row zero's, when measured) in the wandb summary."""
    from pytorch_lightning.loggers import WandbLogger

    summary: dict[str, Any] = {"status": "finished", "seconds": results["seconds"],
                               "hardware/devices": results["hardware"]["devices"],
                               "hardware/accelerator": results["hardware"]["accelerator"]}
    for stage, prefix in (("after", "eval"), ("before", "row_zero")):
        for task, scores in (results.get(stage) or {}).items():
            summary[f"{prefix}/{task}/acc"] = scores["accuracy"]
            summary[f"{prefix}/{task}/protocol"] = scores["protocol"]  # the report refuses to mix protocols
    if results.get("train"):
        summary["train/seconds"] = results["train"]["seconds"]
    summary["data/skipped_rows"] = sum(results["data"]["skipped_rows"].values())
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(summary)


@contextlib.contextmanager
def wandb_closed() -> Iterator[None]:
    """wandb.finish() always runs, after success or failure, so the next job of a multirun starts clean;
    a failure is written to the run's summary (status, error) so wandb shows the cell as failed."""
    try:
        yield
    except BaseException as exc:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.run.summary.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            wandb.finish(exit_code=1)
        raise
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=0)


def log_failed_run(cfg: DictConfig, run_dir: Path, error: str) -> None:
    """A cell that failed before its wandb run started (bad data, a config check) still gets one, marked
    failed, so a report built from wandb shows it as the one built from the run directories does."""
    import wandb

    run = wandb.init(dir=str(run_dir), config={**run_identity(cfg), "config": OmegaConf.to_container(cfg, resolve=True)},
                     **wandb_run_args(cfg))
    run.summary.update({"status": "failed", "error": error})
    run.finish(exit_code=1)
