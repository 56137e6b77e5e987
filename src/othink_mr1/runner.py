"""The main job: check the config, claim the run directory, load data, build the model, score the
starting model (row zero), train (SFT or GRPO), score again, and write results.json and a
before/after table. `resume=` continues an unfinished run from its checkpoint.

Every check that can fail on user input runs before any model is built or trained.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import netrc
import os
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .budget import Budget, budget_line, train_budget
from .checks import check_config
from .preflight import preflight
from .config import run_identity
from .data.datamodule import VLMDataModule
from .data.records import BadRows, row_label
from .evaluation.harness import EvalSpec, effective_max_new_tokens, format_table
from .models.export import export_model
from .models.factory import processor_info
from .utils.errors import ConfigError
from .utils.quiet import quiet_third_party
from .utils.run_dir import (
    FINISHED_MARKER,
    claim_run_dir,
    config_differences,
    record_resume,
    write_json,
    write_run_record,
)

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Rows data.on_bad_row=skip left out, one JSON object per line (split, source, line or row, reason).
BAD_ROWS_FILE = "bad_rows.jsonl"


# ----------------------------------------------------------------------------------- pieces


def report_bad_rows(bad_rows: BadRows, run_dir: Path) -> None:
    """List the rows data.on_bad_row=skip left out in <run_dir>/bad_rows.jsonl, one warning per split."""
    if not bad_rows.rows:
        return
    path = run_dir / BAD_ROWS_FILE
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in bad_rows.rows), encoding="utf-8")
    for split, count in bad_rows.counts().items():
        first = next(r for r in bad_rows.rows if r["split"] == split)
        log.warning("data.on_bad_row=skip: %d bad row(s) of the %s split left out (first: %s: %s); all "
                    "listed in %s", count, split, row_label(first), first["reason"], path)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: resume=true -> the run's last.ckpt, resume=<path> -> that file,
    resume=auto -> the run's last.ckpt when it has one, else none (what a re-launched sweep wants: a
    cell killed mid-training continues, a cell killed before its first checkpoint starts again)."""
    if cfg.resume in (False, None, "", "false"):
        return None
    if cfg.resume == "auto":
        path = run_dir / CHECKPOINT
        return path if cfg.mode == "train" and path.is_file() else None
    path = run_dir / CHECKPOINT if cfg.resume in (True, "true") else Path(str(cfg.resume))
    if not path.is_file():
        raise ConfigError(f"resume={cfg.resume}: no checkpoint at {path}")
    return path


def wandb_tags(identity: dict[str, Any]) -> list[str]:
    """key:value tags the wandb UI filters on: task, method, kl, seed (and model, mode, cell)."""
    keys = ("task", "method", "kl", "seed", "model", "cell") if identity["mode"] == "train" else ("mode", "model", "cell")
    return [f"{k}:{identity[k]}" for k in keys if identity.get(k) is not None]


WANDB_DEFAULT_HOST = "https://api.wandb.ai"


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

        id_file = run_dir / "wandb_run_id"
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
    import sys

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


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any], budget: Budget | None,
                  model: Any = None) -> pl.Trainer:
    from .utils.checkpoints import LastCheckpoint
    from .utils.distributed import DistributedChecks, build_strategy

    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(t, model),
        precision=t.precision, log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar, logger=loggers, default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        # Our samplers shard by rank themselves: the training stream keeps each micro-batch's prompts
        # (and so each group) on one rank, and evaluation never pads shards with repeated items.
        use_distributed_sampler=False,
    )
    if t.strategy in ("auto", "ddp", "ddp_spawn", "single_device"):  # sharded strategies write their own files
        from .utils.checkpoints import AtomicCheckpointIO

        kwargs["plugins"] = [AtomicCheckpointIO()]
    if cfg.mode != "train":
        return pl.Trainer(enable_checkpointing=False, **kwargs)
    m = cfg.method
    every = cfg.eval.every_n_steps
    micro_per_step = m.accumulate_grad_batches / (m.num_iterations if m.name == "grpo" else 1)
    # The loader spans the whole run (one "epoch"); max_steps is the limit that binds.
    # last.ckpt every checkpoint_every_n_steps, and the final state once (whatever the interval).
    callbacks: list[Any] = [LastCheckpoint(run_dir / CHECKPOINT.parent, every_n_train_steps=t.checkpoint_every_n_steps)]
    if t.check_distributed:
        callbacks.append(DistributedChecks(run_dir / "distributed_checks.jsonl"))
    kwargs.update(
        max_steps=budget.total_steps, max_epochs=1, callbacks=callbacks,
        # In-training validation counts micro-batches; None disables it (before/after only).
        val_check_interval=max(1, round(every * micro_per_step)) if every else None,
        check_val_every_n_epoch=None if every else 1,
    )
    if m.name == "sft":  # GRPO optimises by hand (manual optimization): it accumulates and clips itself
        kwargs.update(accumulate_grad_batches=m.accumulate_grad_batches, gradient_clip_val=m.max_grad_norm)
    return pl.Trainer(**kwargs)


def load_weights(cfg: DictConfig) -> tuple[Any, Any]:
    """The model to train or score: `model.*`, or in eval mode a `ckpt=` (.ckpt file or saved folder)."""
    from .models.factory import load_checkpoint_weights, load_kwargs, load_local, load_model

    m = cfg.model
    if cfg.ckpt and Path(cfg.ckpt).is_dir():
        model, processor = load_local(cfg.ckpt, **load_kwargs(m))
    else:
        if m.source == "tiny_base":  # the factory only loads folders; building tiny_base is a training job
            from .jobs.tiny_base import ensure_built

            ensure_built(m, cfg.paths.cache_dir)
        model, processor = load_model(m, cfg.paths.cache_dir)
        if cfg.ckpt:
            model = load_checkpoint_weights(model, cfg.ckpt)
    if cfg.mode == "train":
        from .models.adapters import prepare_for_training

        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if m.lora.enabled:  # checkpointed blocks need an input that requires grad to backprop into adapters
                model.enable_input_require_grads()
        model = prepare_for_training(model, m)
    return model, processor


def build_module(cfg: DictConfig, model: Any, processor: Any, budget: Budget | None, data_position: Any,
                 eval_kwargs: dict[str, Any]) -> Any:
    if cfg.mode != "train":
        from .methods.base import VLMModule

        return VLMModule(model, processor, **eval_kwargs)
    common = dict(method=cfg.method, total_steps=budget.total_steps, data_position=data_position,
                  lora_cfg=cfg.model.lora if cfg.model.lora.enabled else None, **eval_kwargs)
    if cfg.method.name == "sft":
        from .methods.sft import SFTModule

        return SFTModule(model, processor, **common)
    from .methods.grpo import GRPOModule
    from .methods.kl_schedules import build_kl_schedule

    from .models.adapters import has_adapters

    kl = build_kl_schedule(cfg.kl)
    # The reference is the starting policy, frozen; never loaded when beta can never be positive.
    # Under LoRA it is the policy itself with its adapters switched off (no second copy).
    adapter_reference = kl.can_be_positive and has_adapters(model)
    reference = (copy.deepcopy(model).eval().requires_grad_(False)
                 if kl.can_be_positive and not adapter_reference else None)
    max_new = effective_max_new_tokens(cfg.method.max_completion_length, cfg.model.max_new_tokens_cap)
    return GRPOModule(model, processor, kl=kl, reference=reference, adapter_reference=adapter_reference,
                      scorer=cfg.task.scorer, max_new_tokens=max_new, **common)


def evaluate(trainer: pl.Trainer, module: Any, dm: VLMDataModule, stage: str) -> dict[str, dict]:
    module.eval_stage = stage
    trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    return module.last_eval


def row_zero(trainer: pl.Trainer, module: Any, dm: VLMDataModule, run_dir: Path) -> dict[str, dict]:
    """The starting model's scores; a resumed run reuses the ones its first attempt measured."""
    saved = run_dir / "eval" / "row_zero" / "results.json"
    if saved.exists():
        return json.loads(saved.read_text())["results"]
    return evaluate(trainer, module, dm, "row_zero")


# ------------------------------------------------------------------------------------- main


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job (train or eval) from a composed config; returns the results.json payload."""
    started = time.time()
    quiet_third_party()
    eval_tasks = check_config(cfg, overrides)
    train = cfg.mode == "train"
    run_dir = Path(cfg.paths.run_dir)
    resume_from = resume_checkpoint(cfg, run_dir)
    resumes = 0
    # Launched processes of a multi-device run (ranks > 0) leave the directory to rank 0.
    if rank_zero_only.rank == 0:
        moved = claim_run_dir(run_dir, keep=resume_from is not None)
        if moved is not None:
            print(f"[run] earlier unfinished attempt kept in {moved}")
        if resume_from is None:
            write_run_record(run_dir, cfg, Path(cfg.paths.root_dir), overrides)
        else:
            differences = config_differences(run_dir, cfg)
            if differences:
                raise ConfigError(f"resume: the config differs from the one this run started with "
                                  f"({run_dir / 'config.yaml'}): {differences}")
            resumes = record_resume(run_dir, resume_from, Path(cfg.paths.root_dir), overrides)
            print(f"[run] resuming from {resume_from}", flush=True)
        print(f"[run] {cfg.run_name} -> {run_dir}", flush=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Data first: a bad file or field fails here, in seconds, before any model is built.
    dm = VLMDataModule(
        cfg.task, eval_tasks, cache_dir=cfg.paths.cache_dir,
        train_batch_size=cfg.method.batch_size, eval_batch_size=cfg.eval.batch_size,
        sft_target=cfg.method.get("target", "auto"), loss_on=cfg.method.get("loss_on", "assistant"),
        with_train=train, method=cfg.method.name, seed=cfg.seed,
        on_bad_row=cfg.data.on_bad_row, max_bad_fraction=cfg.data.max_bad_fraction,
    )
    dm.setup("fit" if train else "validate")
    if rank_zero_only.rank == 0:
        report_bad_rows(dm.bad_rows, run_dir)
    budget = None
    if train:
        budget = train_budget(cfg.method, cfg.trainer, len(dm.train_split))
        dm.train_num_batches = budget.micro_batches
        print(budget_line(cfg.method, cfg.kl.name, len(dm.train_split), budget), flush=True)

    model, processor = load_weights(cfg)
    dm.processor = processor
    train_loader = dm.train_dataloader() if train else None
    spec = EvalSpec(
        scorers={n: t.scorer for n, t in eval_tasks.items()},
        max_new_tokens={n: effective_max_new_tokens(t.max_new_tokens, cfg.model.max_new_tokens_cap)
                        for n, t in eval_tasks.items()},
        protocol=cfg.eval.protocol,
    )
    eval_kwargs = dict(eval_spec=spec, eval_names=dm.eval_names, eval_dir=run_dir / "eval",
                       write_completions=cfg.eval.write_completions)
    module = build_module(cfg, model, processor, budget, train_loader.position if train else None, eval_kwargs)
    preflight(cfg.model, model, train_loader, {name: dm.eval_dataloader(name) for name in dm.eval_names})
    with wandb_closed():
        loggers = build_loggers(cfg, run_dir, resumes, dm.eval_names)
        trainer = build_trainer(cfg, run_dir, loggers, budget, model)
        before = row_zero(trainer, module, dm, run_dir) if (train and cfg.eval.row_zero) else None
        train_seconds = None
        if train:
            t0 = time.time()
            val = dm.val_dataloader() if cfg.eval.every_n_steps else None
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val,
                        ckpt_path=str(resume_from) if resume_from else None)
            train_seconds = round(time.time() - t0, 1)  # the final state is in last.ckpt (LastCheckpoint)
        after = evaluate(trainer, module, dm, "final" if train else "eval")

        if train and cfg.save_model and trainer.is_global_zero:
            export_model(module.model, processor, run_dir / "model")

        results = {
            **run_identity(cfg), "ckpt": cfg.ckpt, "eval_tasks": dm.eval_names,
            "prompts": {n: {"prompt": t.prompt, "eval_prompt": t.eval_prompt or t.prompt} for n, t in eval_tasks.items()},
            "before": before, "after": after,
            "train": ({"steps": int(trainer.global_step), "samples": module.samples_seen, "seconds": train_seconds,
                       "skipped_steps": module.skipped_steps,
                       "resumed_from": str(resume_from) if resume_from else None, **budget.as_dict()}
                      if train else None),
            "data": {"on_bad_row": cfg.data.on_bad_row, "skipped_rows": dm.bad_rows.counts(),
                     "bad_rows_file": BAD_ROWS_FILE if dm.bad_rows.rows else None},
            "seconds": round(time.time() - started, 1),
            "hardware": hardware(trainer),
            "processing": processor_info(processor),
        }
        if trainer.is_global_zero:
            # Written last: its presence marks the run finished (and protects it from reruns).
            write_wandb_summary(loggers, results)
            write_json(run_dir / FINISHED_MARKER, results)
            print(results_table(results), flush=True)
    return results


def hardware(trainer: pl.Trainer) -> dict[str, Any]:
    """What the run ran on, for device-hours per cell: accelerator kind, devices over all nodes, and the
    GPU model and peak GPU memory where there is one."""
    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    cuda = accelerator == "cuda" and torch.cuda.is_available()
    return {"accelerator": accelerator, "devices": int(trainer.world_size), "gpu": torch.cuda.get_device_name(0) if cuda else None,
            # This process's peak (rank zero's under data parallelism).
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def results_table(results: dict[str, Any]) -> str:
    rows = {}
    if results.get("before"):
        rows["before (row zero)"] = results["before"]
    label = f"after {results['method']}" if results["mode"] == "train" else results["model"]
    rows[label] = results["after"]
    title = f"accuracy on the test splits - {results['run_name']}"
    return f"\n{title}\n{format_table(rows, results['eval_tasks'])}\n"
