"""The main job: check the config, claim the run directory, load data, build the model, score the
starting model (row zero), train (with the method's module: methods/method.py), score again, and write
results.json and a before/after table. `resume=` continues an unfinished run from its checkpoint.

Every check that can fail on user input runs before any model is built or trained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from .budget import Budget, budget_line, memory_line, memory_plan, train_budget
from .config_checks import check_config
from .data.datamodule import VLMDataModule
from .data.records import BadRows, DataError, row_label
from .evaluation.curve import TrainingCurve, check_curve_points, curves_enabled, format_curve
from .evaluation.harness import EvalSpec, effective_max_new_tokens, format_table
from .loggers import build_loggers, wandb_closed, write_wandb_summary
from .methods.registry import find_method
from .methods.evaluation_module import EvaluationModule
from .models.export import export_model
from .models.factory import processor_info
from .naming import run_identity
from .preflight import preflight
from .results import Results
from .results import write as write_results
from .utils.errors import ConfigError, ModelError
from .utils.quiet import quiet_third_party
from .utils.preemption import Terminated, terminate_on_signals
from .utils.run_dir import FINISHED_MARKER, RunLock, claim_run_dir, config_differences, record_failure, record_resume, write_run_record

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
    cell killed mid-training continues, a cell killed before its first checkpoint starts again).

    The file is checked here, before the run folder is claimed: a damaged one (truncated, not a
    checkpoint, NaN/inf weights) is a ModelError naming it, and the folder stays as it was. resume=auto
    refuses a damaged last.ckpt too rather than starting again, which would move that attempt aside."""
    from .models.factory import check_checkpoint

    if cfg.resume in (False, None, "", "false"):
        return None
    if cfg.resume == "auto":
        path = run_dir / CHECKPOINT
        if not (cfg.mode == "train" and path.is_file()):
            return None
    else:
        path = run_dir / CHECKPOINT if cfg.resume in (True, "true") else Path(str(cfg.resume))
        if not path.is_file():
            raise ConfigError(f"resume={cfg.resume}: no checkpoint at {path}")
    resume = "true" if cfg.resume is True else cfg.resume
    check_checkpoint(path, f"resume={resume}", "resume from an intact copy (resume=PATH), or start the run again "
                     "with resume=false (this attempt's files move to attempts/)")
    return path


@contextlib.contextmanager
def held_run_dir(cfg: DictConfig, run_dir: Path, resume_from: Path | None,
                 overrides: list[str] | None) -> Iterator[int]:
    """The run directory for the job's life: locked (utils/run_dir.RunLock: a second run in the same folder
    stops at once and touches nothing), claimed (claim_run), and, if the job does not finish, its error.json
    written while the lock is still held: "terminated" for a signal, "failed" for an exception. Yields how
    many times the run was resumed. Launched processes of a multi-device run (ranks > 0) leave all of it to
    rank 0."""
    if rank_zero_only.rank != 0:
        yield 0
        return
    with RunLock(run_dir):
        resumes = claim_run(cfg, run_dir, resume_from, overrides)
        try:
            yield resumes
        except Terminated as exc:
            record_failure(run_dir, exc, overrides, run_identity(cfg), **exc.record(),
                           resume=resume_command(cfg, overrides, exc))
            raise
        except Exception as exc:
            exc.error_record = record_failure(run_dir, exc, overrides, run_identity(cfg))  # type: ignore[attr-defined]
            raise


def resume_command(cfg: DictConfig, overrides: list[str] | None, exc: Terminated) -> str:
    """How to go on after a signal: a sweep is re-launched (its cells resume=auto), a training run with a
    checkpoint resumes from it, anything else starts again (its files move to attempts/)."""
    if cfg.get("sweep"):
        return "re-launch the sweep with the same command: finished cells are skipped, this one continues"
    command = " ".join(["python run.py", *[o for o in (overrides or []) if not o.startswith("resume=")]])
    if exc.checkpoint and cfg.mode == "train":
        return f"{command} resume=true"
    return f"{command} (no checkpoint yet: it starts again)"


def claim_run(cfg: DictConfig, run_dir: Path, resume_from: Path | None, overrides: list[str] | None) -> int:
    """Take the locked run directory (an earlier unfinished attempt is moved aside unless resumed) and record
    the run, or the resume; returns how many times the run was resumed (0: a fresh start)."""
    if resume_from is not None and not (run_dir / FINISHED_MARKER).exists():
        # Checked before anything moves: a refused resume leaves the folder as it was.
        differences = config_differences(run_dir, cfg)
        if differences:
            raise ConfigError(f"resume: the config differs from the one this run started with "
                              f"({run_dir / 'config.yaml'}): {differences}")
    moved = claim_run_dir(run_dir, keep=resume_from is not None)
    if moved is not None:
        print(f"[run] earlier unfinished attempt kept in {moved}")
    resumes = 0
    if resume_from is None:
        write_run_record(run_dir, cfg, Path(cfg.paths.root_dir), overrides)
    else:
        resumes = record_resume(run_dir, resume_from, Path(cfg.paths.root_dir), overrides)
        print(f"[run] resuming from {resume_from}", flush=True)
    print(f"[run] {cfg.run_name} -> {run_dir}", flush=True)
    return resumes


def set_threads(cfg: DictConfig) -> None:
    """torch's CPU threads: trainer.num_threads, else the job's CPUs inside a SLURM job (torch's default counts
    the node's cores, so jobs sharing a node oversubscribe it; OMP_NUM_THREADS, when set, still wins), else
    torch's default. Set before meta.json records the count."""
    count = cfg.trainer.num_threads
    if not count and "OMP_NUM_THREADS" not in os.environ and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        count = int(os.environ["SLURM_CPUS_PER_TASK"])
        print(f"[run] torch threads: {count} (SLURM_CPUS_PER_TASK; set trainer.num_threads to choose)", flush=True)
    if count:
        torch.set_num_threads(count)


def set_seeds(cfg: DictConfig) -> None:
    """Every seed (Python, NumPy, torch, loader workers)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def load_data(cfg: DictConfig, eval_tasks: dict[str, Any], run_dir: Path) -> VLMDataModule:
    """Every split the run needs, loaded and validated: a bad file or field fails here, in seconds,
    before any model is built."""
    train = cfg.mode == "train"
    dm = VLMDataModule(
        cfg.task, eval_tasks, cache_dir=cfg.paths.cache_dir,
        train_batch_size=cfg.method.batch_size, eval_batch_size=cfg.eval.batch_size,
        train_collator=find_method(cfg.method.name).train_collator(cfg.method) if train else None,
        sft_target=cfg.method.get("target", "auto"), with_train=train, seed=cfg.seed,
        on_bad_row=cfg.data.on_bad_row, max_bad_fraction=cfg.data.max_bad_fraction, eval_split=str(cfg.eval.split),
    )
    dm.setup("fit" if train else "validate")
    if rank_zero_only.rank == 0:
        report_bad_rows(dm.bad_rows, run_dir)
    return dm


def plan_budget(cfg: DictConfig, dm: VLMDataModule) -> Budget:
    """The run's optimizer steps and micro-batches, from the train split's size; sizes the training
    loader and prints the budget line."""
    budget = train_budget(cfg.method, cfg.trainer, len(dm.train_split))
    dm.train_num_batches = budget.micro_batches
    print(budget_line(cfg.method, cfg.kl.name, len(dm.train_split), budget), flush=True)
    if curves_enabled(cfg):  # a run sized by epochs learns its steps only here
        check_curve_points(cfg.eval.curve_points, budget.total_steps, updates_per_batch(cfg),
                           f" ({len(dm.train_split)} train samples)")
    return budget


def updates_per_batch(cfg: DictConfig) -> int:
    return find_method(cfg.method.name).updates_per_batch(cfg.method)


def training_curve(cfg: DictConfig, dm: VLMDataModule, module: Any, budget: Budget | None) -> TrainingCurve | None:
    """The training curve's callback (eval.curve_points), or None: no curve, or not a training run."""
    if budget is None or not curves_enabled(cfg):
        return None
    curve = TrainingCurve.from_config(cfg, dm, module.eval_spec, budget.total_steps, updates_per_batch(cfg))
    print(curve.describe(), flush=True)
    return curve


def check_model_files(cfg: DictConfig) -> None:
    """A local model folder (`model.path`, or a `ckpt=` folder) is read as far as its headers before the run
    folder is claimed: a missing, empty or cut-short one stops the run with the folder untouched. The
    weights' finiteness needs them loaded, so it is checked at load (load_weights)."""
    from .models.factory import check_model_folder

    if cfg.ckpt and Path(cfg.ckpt).is_dir():
        key, folder = "ckpt", cfg.ckpt
    elif cfg.model.source == "pretrained" and cfg.model.path:
        key, folder = "model.path", cfg.model.path
    else:
        return
    try:
        check_model_folder(folder)
    except ModelError as exc:
        raise ModelError(f"{key}: {exc}") from None  # the message names the folder; this names the key


def print_memory(cfg: DictConfig, module: Any) -> None:
    """The training state's memory per device (budget.memory_plan), from the loaded model's parameter counts."""
    from .models.adapters import trainable_counts

    trainable, total = trainable_counts(module.model)
    reference = trainable_counts(module.reference)[1] if module.reference is not None else 0
    print(memory_line(memory_plan(cfg.trainer, cfg.model.dtype, total, trainable, reference)), flush=True)


def load_weights(cfg: DictConfig) -> tuple[Any, Any]:
    """The model to train or score: `model.*`, or in eval mode a `ckpt=` (.ckpt file or saved folder)."""
    from .models.factory import load_checkpoint_weights, load_kwargs, load_local, load_model

    m = cfg.model
    if cfg.ckpt and Path(cfg.ckpt).is_dir():
        model, processor = load_local(cfg.ckpt, **load_kwargs(m))
    else:
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


def eval_settings(cfg: DictConfig, eval_tasks: dict[str, Any], dm: VLMDataModule, run_dir: Path) -> dict[str, Any]:
    """What the module's evaluation needs: each task's scorer and generation budget, where to write."""
    spec = EvalSpec(
        scorers={n: t.scorer for n, t in eval_tasks.items()},
        max_new_tokens={n: effective_max_new_tokens(t.max_new_tokens, cfg.model.max_new_tokens_cap)
                        for n, t in eval_tasks.items()},
        protocol=cfg.eval.protocol,
    )
    return dict(eval_spec=spec, eval_names=dm.eval_names, eval_dir=run_dir / "eval",
                write_completions=cfg.eval.write_completions)


def build_module(cfg: DictConfig, model: Any, processor: Any, budget: Budget | None, data_position: Any,
                 eval_kwargs: dict[str, Any]) -> Any:
    """The method's LightningModule (its descriptor names the class) to train; the evaluation alone to score."""
    if cfg.mode != "train":
        return EvaluationModule(model, processor, **eval_kwargs)
    module_class = get_object(find_method(cfg.method.name).module)
    return module_class.from_config(cfg, model, processor, method=cfg.method, total_steps=budget.total_steps,
                                    data_position=data_position,
                                    lora_cfg=cfg.model.lora if cfg.model.lora.enabled else None, **eval_kwargs)


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any], budget: Budget | None,
                  model: Any = None, curve: TrainingCurve | None = None) -> pl.Trainer:
    from .utils.checkpoints import LastCheckpoint
    from .utils.distributed import RankAgreementCallback, build_strategy
    from .utils.preemption import PreemptionCheckpoint, TerminationCheckpoint, cluster_plugins, in_submitit_job
    from .utils.progress import progress_output

    t = cfg.trainer
    bar, progress = progress_output(t.enable_progress_bar, t.progress_every_s)  # without a terminal: plain lines
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(t, model),
        precision=t.precision, log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        enable_progress_bar=bar, callbacks=progress, logger=loggers, default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        # Our samplers shard by rank themselves: the training stream keeps each micro-batch's prompts
        # (and so each group) on one rank, and evaluation never pads shards with repeated items.
        use_distributed_sampler=False,
    )
    # Under SLURM: Lightning reads ranks from SLURM's variables but leaves requeueing to submitit.
    kwargs["plugins"] = cluster_plugins()
    if t.strategy in ("auto", "ddp", "ddp_spawn", "single_device"):  # sharded strategies write their own files
        from .utils.checkpoints import AtomicCheckpointIO

        kwargs["plugins"].append(AtomicCheckpointIO())
    if cfg.mode != "train":
        return pl.Trainer(enable_checkpointing=False, **kwargs)
    m = cfg.method
    method = find_method(m.name)
    every = cfg.eval.every_n_steps
    micro_per_step = m.accumulate_grad_batches / updates_per_batch(cfg)
    # The loader spans the whole run (one "epoch"); max_steps is the limit that binds.
    # last.ckpt every checkpoint_every_n_steps, and the final state once (whatever the interval).
    last = LastCheckpoint(run_dir / CHECKPOINT.parent, every_n_train_steps=t.checkpoint_every_n_steps)
    # SIGTERM / SIGINT: last.ckpt at the end of the step in flight, then Terminated (utils/preemption.py).
    callbacks: list[Any] = [*progress, last, TerminationCheckpoint(last, run_dir)]  # progress first: stopped step's line
    if in_submitit_job():  # a SLURM job of hydra/launcher=slurm: preemption writes last.ckpt at the current step
        callbacks.append(PreemptionCheckpoint(last, run_dir))
    if t.check_distributed:
        callbacks.append(RankAgreementCallback(run_dir / "distributed_checks.jsonl"))
    if curve is not None:
        callbacks.append(curve)
    kwargs.update(
        max_steps=budget.total_steps, max_epochs=1, callbacks=callbacks,
        # In-training validation counts micro-batches; None disables it (before/after only).
        val_check_interval=max(1, round(every * micro_per_step)) if every else None,
        check_val_every_n_epoch=None if every else 1,
        **method.trainer_settings(m),
    )
    return pl.Trainer(**kwargs)


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


def fit(cfg: DictConfig, trainer: pl.Trainer, module: Any, dm: VLMDataModule, train_loader: Any,
        resume_from: Path | None) -> float:
    """Train (the final state lands in last.ckpt: LastCheckpoint); returns the seconds it took."""
    t0 = time.time()
    val = dm.val_dataloader() if cfg.eval.every_n_steps else None
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val,
                ckpt_path=str(resume_from) if resume_from else None)
    return round(time.time() - t0, 1)


def train_record(trainer: pl.Trainer, module: Any, budget: Budget, seconds: float, resume_from: Path | None) -> dict:
    return {"steps": int(trainer.global_step), "samples": module.samples_seen, "seconds": seconds,
            "skipped_steps": module.skipped_steps, "resumed_from": str(resume_from) if resume_from else None,
            **budget.as_dict(), **module.train_record()}


# ------------------------------------------------------------------------------------- main


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job (train or eval) from a composed config; returns the results.json payload (results.py).
    SIGTERM and SIGINT raise utils.preemption.Terminated (in training, after checkpointing the step in
    flight); the run's error.json then says so."""
    started = time.time()
    quiet_third_party()
    with terminate_on_signals():
        eval_tasks = check_config(cfg, overrides)
        run_dir = Path(cfg.paths.run_dir)
        resume_from = resume_checkpoint(cfg, run_dir)
        check_model_files(cfg)
        set_threads(cfg)
        with held_run_dir(cfg, run_dir, resume_from, overrides) as resumes:
            return run_held(cfg, eval_tasks, run_dir, resume_from, resumes, started)


def run_held(cfg: DictConfig, eval_tasks: dict[str, Any], run_dir: Path, resume_from: Path | None, resumes: int,
             started: float) -> dict[str, Any]:
    """The job in its held run directory: data, model, row zero, fit, final eval, results.json."""
    train = cfg.mode == "train"
    set_seeds(cfg)

    dm = load_data(cfg, eval_tasks, run_dir)  # data first: bad data fails before any model is built
    budget = plan_budget(cfg, dm) if train else None
    model, processor = load_weights(cfg)
    reply = reply_record(model, processor)
    dm.processor = processor
    train_loader = dm.train_dataloader() if train else None
    module = build_module(cfg, model, processor, budget, train_loader.position if train else None,
                          eval_settings(cfg, eval_tasks, dm, run_dir))
    if train:
        print_memory(cfg, module)
    preflight(cfg.model, model, train_loader, {name: dm.eval_dataloader(name) for name in dm.eval_names})
    curve = training_curve(cfg, dm, module, budget)

    with wandb_closed():
        loggers = build_loggers(cfg, run_dir, resumes, dm.eval_names)
        trainer = build_trainer(cfg, run_dir, loggers, budget, model, curve)
        before = row_zero(trainer, module, dm, run_dir) if (train and cfg.eval.row_zero) else None
        train_seconds = fit(cfg, trainer, module, dm, train_loader, resume_from) if train else None
        after = evaluate(trainer, module, dm, "final" if train else "eval")
        if train and cfg.save_model:
            policy, weights = module.whole_policy()  # every rank: under FSDP the weights are gathered
            if trainer.is_global_zero:
                export_model(policy, processor, run_dir / "model", state_dict=weights)

        record = Results(
            **run_identity(cfg), ckpt=cfg.ckpt, eval_tasks=dm.eval_names, eval_split=dm.eval_split,
            prompts={n: {"prompt": t.prompt, "eval_prompt": t.eval_prompt or t.prompt} for n, t in eval_tasks.items()},
            before=before, after=after,
            curve=curve.record() if curve else None, curve_settings=curve.settings() if curve else None,
            train=train_record(trainer, module, budget, train_seconds, resume_from) if train else None,
            data={"on_bad_row": cfg.data.on_bad_row, "skipped_rows": dm.bad_rows.counts(),
                  "bad_rows_file": BAD_ROWS_FILE if dm.bad_rows.rows else None},
            seconds=round(time.time() - started, 1),
            hardware=hardware(trainer),
            processing=processor_info(processor),
            reply=reply,
        )
        results = record.to_dict()
        if trainer.is_global_zero:
            # Written last: its presence marks the run finished (and protects it from reruns).
            write_wandb_summary(loggers, results)
            write_results(run_dir, record)
            print(results_table(results), flush=True)
    return results


def reply_record(model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """How a reply ends (data.collate.reply_end: the template's closing token, or the tokenizer's eos appended
    where the template closes nothing) and the tokens that stop generation, for results.json. Appending
    the eos is said once in the log. A template that writes plain text after a reply cannot train SFT
    (the SFT collator refuses it), but evaluation and GRPO never render an assistant turn: recorded."""
    from .data.collate import reply_end
    from .models.rollouts import stop_token_ids

    tokenizer = processor.tokenizer
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(model, tokenizer))
    try:
        end = reply_end(processor)
    except DataError as exc:
        return {"ends_with": None, "how": "not closed by the template", "why": str(exc), "stop_tokens": stops}
    if end.how == "eos appended":
        log.info("the chat template closes nothing after a reply: SFT appends the tokenizer's eos %s, and generation "
                 "stops at it (results.json: reply)", end.text)
    return {**end.record(), "stop_tokens": stops}


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
    title = f"accuracy on the {results.get('eval_split', 'test')} splits - {results['run_name']}"
    text = f"\n{title}\n{format_table(rows, results['eval_tasks'])}\n"
    if results.get("curve"):
        items = ", ".join(f"{t} {n}" for t, n in results["curve_settings"]["items"].items())
        text += (f"\ntraining curve (items per task: {items}; sampled: {results['curve_settings']['samples_per_item']} "
                 f"per item at temperature 1; KL to the starting model in nats per completion)\n"
                 f"{format_curve(results['curve'], results['eval_tasks'])}\n")
    return text
