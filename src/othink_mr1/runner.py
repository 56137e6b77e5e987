"""The main job: check the config, claim the run directory, load data, build the model, score the
starting model (row zero), train, score again, and write results.json and a before/after table.

Every check that can fail on user input runs before any model is built or trained.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .data.datamodule import VLMDataModule
from .data.synthetic.counting import CELL, MAX_OBJECTS
from .data.tasks import SOURCES
from .evaluation.harness import EvalSpec, effective_max_new_tokens, format_table
from .methods.schedules import LR_SCHEDULES
from .rewards.scorers import SCORERS
from .utils.errors import ConfigError
from .utils.quiet import quiet_third_party
from .utils.run_dir import FINISHED_MARKER, claim_run_dir, write_json, write_run_record

log = logging.getLogger(__name__)

METHODS = ("sft",)
MODEL_SOURCES = ("tiny", "tiny_base", "pretrained")


# ------------------------------------------------------------------------------------ checks


def eval_task_configs(cfg: DictConfig) -> dict[str, Any]:
    """Config of every task in eval.tasks; the trained task's own node wins, so `task.*` overrides
    apply to its evaluation too. The trained task is always scored."""
    names = list(cfg.eval.tasks)
    if cfg.mode == "train" and cfg.task.name not in names:
        names.insert(0, cfg.task.name)
    known = sorted(set(cfg.tasks) | {cfg.task.name})
    out = {}
    for name in names:
        if name == cfg.task.name:
            out[name] = cfg.task
        elif name in cfg.tasks:
            out[name] = cfg.tasks[name]
        else:
            raise ConfigError(f"eval.tasks: unknown task '{name}'; known tasks: {known}")
    return out


def check_task(task: Any, key: str) -> None:
    if task.source not in SOURCES:
        raise ConfigError(f"{key}.source='{task.source}': expected one of {list(SOURCES)}")
    if task.scorer not in SCORERS:
        raise ConfigError(f"{key}.scorer='{task.scorer}': expected one of {sorted(SCORERS)}")
    for field in ("prompt", "eval_prompt"):
        template = task.get(field)
        if template is not None and "{question}" not in template:
            raise ConfigError(f"{key}.{field} must contain '{{question}}' (where the question goes): {template!r}")
    if task.max_new_tokens < 1:
        raise ConfigError(f"{key}.max_new_tokens={task.max_new_tokens}: must be at least 1")
    if task.source == "synthetic_counting" and task.synthetic is not None:
        # One object per 28px cell (a merged visual token): 10 objects need a 4x4 grid.
        if (task.synthetic.image_size // CELL) ** 2 < MAX_OBJECTS:
            raise ConfigError(f"{key}.synthetic.image_size={task.synthetic.image_size}: counting scenes of up to "
                              f"{MAX_OBJECTS} objects need at least {4 * CELL}px")


def check_config(cfg: DictConfig) -> dict[str, Any]:
    """Semantic checks the schema cannot express; returns the eval task configs."""
    if cfg.mode not in ("train", "eval"):
        raise ConfigError(f"mode='{cfg.mode}': expected train or eval")
    if cfg.model.source not in MODEL_SOURCES:
        raise ConfigError(f"model.source='{cfg.model.source}': expected one of {list(MODEL_SOURCES)}")
    eval_tasks = eval_task_configs(cfg)
    if not eval_tasks:
        raise ConfigError("eval.tasks is empty: name at least one task to score")
    for name, task in eval_tasks.items():
        check_task(task, "task" if name == cfg.task.name else f"tasks.{name}")
    if cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.batch_size={cfg.eval.batch_size}: must be at least 1")
    if cfg.mode == "train":
        check_task(cfg.task, "task")
        m = cfg.method
        if m.name not in METHODS:
            raise ConfigError(f"method.name='{m.name}': expected one of {list(METHODS)}")
        if m.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"method.lr_schedule='{m.lr_schedule}': expected one of {list(LR_SCHEDULES)}")
        for key in ("batch_size", "accumulate_grad_batches", "epochs"):
            if m[key] < 1:
                raise ConfigError(f"method.{key}={m[key]}: must be at least 1")
        if m.max_steps is not None and m.max_steps < 1:
            raise ConfigError(f"method.max_steps={m.max_steps}: must be at least 1 (or null to train by epochs)")
        if not 0.0 <= m.warmup_ratio < 1.0:
            raise ConfigError(f"method.warmup_ratio={m.warmup_ratio}: must be in [0, 1)")
        if m.name == "sft":
            if m.target not in ("auto", "solution", "thinking_solution"):
                raise ConfigError(f"method.target='{m.target}': expected auto, solution or thinking_solution")
            if m.loss_on not in ("assistant", "all"):
                raise ConfigError(f"method.loss_on='{m.loss_on}': expected assistant or all")
        if cfg.ckpt:
            raise ConfigError("ckpt= is for mode=eval; to train from saved weights use "
                              "model.source=pretrained model.path=<folder>")
    if cfg.ckpt and not Path(cfg.ckpt).exists():
        raise ConfigError(f"ckpt='{cfg.ckpt}': no such file or folder")
    return eval_tasks


# ----------------------------------------------------------------------------------- pieces


def world_size(trainer_cfg: Any) -> int:
    """Processes a Trainer with this config will run (for the budget line printed at start-up)."""
    devices = trainer_cfg.devices
    if isinstance(devices, int):
        n = devices if devices > 0 else max(1, torch.cuda.device_count())
    elif isinstance(devices, str):
        n = len([d for d in devices.split(",") if d.strip()]) if "," in devices else (
            int(devices) if devices.isdigit() else max(1, torch.cuda.device_count()))
    else:
        n = len(devices)
    return n * trainer_cfg.num_nodes


def train_budget(cfg: DictConfig, num_train: int) -> dict[str, int]:
    """Optimizer steps and samples: prompts x accumulation x devices x nodes per step."""
    m = cfg.method
    procs = world_size(cfg.trainer)
    per_step = m.batch_size * m.accumulate_grad_batches * procs
    batches_per_epoch = math.ceil(num_train / (m.batch_size * procs))
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / m.accumulate_grad_batches))
    total = m.max_steps if m.max_steps is not None else steps_per_epoch * m.epochs
    return {"processes": procs, "samples_per_step": per_step, "steps_per_epoch": steps_per_epoch,
            "total_steps": total, "warmup_steps": int(round(m.warmup_ratio * total))}


def budget_line(cfg: DictConfig, num_train: int, budget: dict[str, int]) -> str:
    m = cfg.method
    return (f"[budget] {m.name}: {m.batch_size} samples/device x {m.accumulate_grad_batches} accumulation x "
            f"{budget['processes']} process(es) = {budget['samples_per_step']} samples per optimizer step; "
            f"{num_train} train samples -> {budget['steps_per_epoch']} steps/epoch; "
            f"{budget['total_steps']} optimizer steps ({budget['warmup_steps']} warmup), lr {m.lr:g} {m.lr_schedule}")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        wandb_logger = WandbLogger(
            name=cfg.run_name, project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
            save_dir=str(run_dir), mode=cfg.logger.mode, tags=list(cfg.logger.tags) or None,
        )
        loggers.append(wandb_logger)
    # Top-level task/method/model/seed let the wandb UI group and filter runs.
    params = {"task": cfg.task.name, "method": cfg.method.name, "model": cfg.model.name, "seed": cfg.seed,
              "mode": cfg.mode, "run_name": cfg.run_name,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    for lg in loggers:
        lg.log_hyperparams(params)
    return loggers


@contextlib.contextmanager
def wandb_closed() -> Iterator[None]:
    """wandb.finish() always runs, after success or failure, so the next job of a multirun starts clean."""
    failed = True
    try:
        yield
        failed = False
    finally:
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=1 if failed else 0)


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any], budget: dict[str, int] | None) -> pl.Trainer:
    from pytorch_lightning.callbacks import ModelCheckpoint

    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar, logger=loggers, default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    if cfg.mode == "train":
        m = cfg.method
        every = cfg.eval.every_n_steps
        total_steps = budget["total_steps"]
        # Both limits agree, so the progress bar shows "Epoch i/N" (max_steps is the one that binds).
        max_epochs = math.ceil(total_steps / budget["steps_per_epoch"])
        kwargs.update(
            max_steps=total_steps, max_epochs=max_epochs, accumulate_grad_batches=m.accumulate_grad_batches,
            gradient_clip_val=m.max_grad_norm,
            callbacks=[ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, save_top_k=0)],
            # In-training validation counts micro-batches; None disables it (before/after only).
            val_check_interval=every * m.accumulate_grad_batches if every else None,
            check_val_every_n_epoch=None if every else 1,
        )
    else:
        kwargs.update(enable_checkpointing=False)
    return pl.Trainer(**kwargs)


def load_weights(cfg: DictConfig) -> tuple[Any, Any]:
    """The model to train or score: `model.*`, or in eval mode a `ckpt=` (.ckpt file or saved folder)."""
    from .models.factory import load_checkpoint_weights, load_local, load_model

    m = cfg.model
    if cfg.ckpt and Path(cfg.ckpt).is_dir():
        model, processor = load_local(cfg.ckpt, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                      min_pixels=m.min_pixels, max_pixels=m.max_pixels)
    else:
        model, processor = load_model(m, cfg.paths.cache_dir)
        if cfg.ckpt:
            load_checkpoint_weights(model, cfg.ckpt)
    if m.gradient_checkpointing and cfg.mode == "train":
        model.gradient_checkpointing_enable()
    return model, processor


def evaluate(trainer: pl.Trainer, module: Any, dm: VLMDataModule, stage: str) -> dict[str, dict]:
    module.eval_stage = stage
    trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    return module.last_eval


# ------------------------------------------------------------------------------------- main


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job (train or eval) from a composed config; returns the results.json payload."""
    started = time.time()
    quiet_third_party()
    eval_tasks = check_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    # Launched processes of a multi-device run (ranks > 0) leave the directory to rank 0.
    if rank_zero_only.rank == 0:
        moved = claim_run_dir(run_dir)
        if moved is not None:
            print(f"[run] earlier unfinished attempt kept in {moved}")
        write_run_record(run_dir, cfg, Path(cfg.paths.root_dir), overrides)
        print(f"[run] {cfg.run_name} -> {run_dir}", flush=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Data first: a bad file or field fails here, in seconds, before any model is built.
    train = cfg.mode == "train"
    dm = VLMDataModule(
        cfg.task, eval_tasks, cache_dir=cfg.paths.cache_dir,
        train_batch_size=cfg.method.batch_size, eval_batch_size=cfg.eval.batch_size,
        sft_target=cfg.method.get("target", "auto"), loss_on=cfg.method.get("loss_on", "assistant"),
        with_train=train,
    )
    dm.setup("fit" if train else "validate")
    budget = None
    if train:
        budget = train_budget(cfg, len(dm.train_split))
        print(budget_line(cfg, len(dm.train_split), budget), flush=True)

    model, processor = load_weights(cfg)
    dm.processor = processor

    spec = EvalSpec(
        scorers={n: t.scorer for n, t in eval_tasks.items()},
        max_new_tokens={n: effective_max_new_tokens(t.max_new_tokens, cfg.model.max_new_tokens_cap)
                        for n, t in eval_tasks.items()},
    )
    eval_kwargs = dict(eval_spec=spec, eval_names=dm.eval_names, eval_dir=run_dir / "eval",
                       write_completions=cfg.eval.write_completions)
    with wandb_closed():
        loggers = build_loggers(cfg, run_dir)
        trainer = build_trainer(cfg, run_dir, loggers, budget)
        if train:
            from .methods.sft import SFTModule

            module = SFTModule(model, processor, cfg.method, total_steps=budget["total_steps"], **eval_kwargs)
        else:
            from .methods.base import VLMModule

            module = VLMModule(model, processor, **eval_kwargs)

        before = evaluate(trainer, module, dm, "row_zero") if (train and cfg.eval.row_zero) else None
        train_seconds = None
        if train:
            t0 = time.time()
            val = dm.val_dataloader() if cfg.eval.every_n_steps else None
            trainer.fit(module, train_dataloaders=dm.train_dataloader(), val_dataloaders=val)
            train_seconds = round(time.time() - t0, 1)
        after = evaluate(trainer, module, dm, "final" if train else "eval")

        if train and cfg.save_model and trainer.is_global_zero:
            module.model.save_pretrained(run_dir / "model")
            processor.save_pretrained(run_dir / "model")

        results = {
            "run_name": cfg.run_name, "mode": cfg.mode, "task": cfg.task.name if train else None,
            "method": cfg.method.name if train else None, "model": cfg.model.name, "seed": cfg.seed,
            "ckpt": cfg.ckpt, "eval_tasks": dm.eval_names,
            "prompts": {n: {"prompt": t.prompt, "eval_prompt": t.eval_prompt or t.prompt} for n, t in eval_tasks.items()},
            "before": before, "after": after,
            "train": ({"steps": int(trainer.global_step), "samples": module.samples_seen, "seconds": train_seconds,
                       **budget} if train else None),
            "seconds": round(time.time() - started, 1),
        }
        if trainer.is_global_zero:
            # Written last: its presence marks the run finished (and protects it from reruns).
            write_json(run_dir / FINISHED_MARKER, results)
            print(results_table(results), flush=True)
    return results


def results_table(results: dict[str, Any]) -> str:
    rows = {}
    if results.get("before"):
        rows["before (row zero)"] = results["before"]
    label = f"after {results['method']}" if results["mode"] == "train" else results["model"]
    rows[label] = results["after"]
    title = f"accuracy on the test splits - {results['run_name']}"
    return f"\n{title}\n{format_table(rows, results['eval_tasks'])}\n"
