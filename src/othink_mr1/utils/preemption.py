"""Signals during a run: SLURM preemption (checkpoint, then requeue) and termination (SIGTERM, SIGINT:
checkpoint, then stop with 128 + the signal's number). Both finish the optimizer step in flight first.

Preemption and time limits on SLURM: the current step is checkpointed before the job is requeued.

Requeueing belongs to submitit, the launcher behind `hydra/launcher=slurm`. sbatch gets `--signal=USR2@<delay>`
(`hydra.launcher.signal_delay_s`), and a scheduler preempting the job sends the same signal. submitit's
handler then resubmits the cell (Hydra's launcher is checkpointable) and requeues the job. It counts a
signal near the time limit as a timeout, which requeues at most `hydra.launcher.max_num_timeout` times.
The requeued cell starts with `resume: auto`, as every sweep job does, and continues from its
`checkpoints/last.ckpt`.

`PreemptionCheckpoint` makes that checkpoint current. It holds the signal until the optimizer step in flight
ends, writes last.ckpt at that step (the same file and state as the periodic saves, so the resumed run ends
bit-identical to an uninterrupted one), then hands the signal to submitit's handler, which requeues the job
and exits. Outside training (loading, evaluation) the signal goes to submitit at once: the last checkpoint
already holds everything trained so far.

Lightning's own SLURM requeue (SLURMEnvironment's auto_requeue, on SIGUSR1) is switched off
(`cluster_plugins`), so one mechanism owns requeueing.

Termination: `terminate_on_signals` (the whole run) turns SIGTERM and SIGINT into `Terminated`, raised at once
outside training. During training `TerminationCheckpoint` holds the signal to the end of the optimizer step
in flight, writes last.ckpt at it, then raises `Terminated`, so `resume=true` continues from that step. A
second signal while one is held stops at once (the last periodic checkpoint stays). Lightning's own SIGTERM
handling would end the process with status 0 and no checkpoint; it is displaced on one process. With several
processes (DDP) Lightning's handler stays, since it is what tells the other ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
from pytorch_lightning.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

# submitit's preemption signal (its JobEnvironment.USR_SIG): USR2 unless SUBMITIT_PREEMPT_SIGNAL names another.
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def in_submitit_job() -> bool:
    """Whether this process is a job that submitit started (its sbatch script exports SUBMITIT_EXECUTOR)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def preempt_signal() -> signal.Signals:
    return getattr(signal, "SIG" + os.environ.get(PREEMPT_SIGNAL_ENV, "USR2"))


def cluster_plugins() -> list[Any]:
    """Lightning's SLURM environment without its own requeue, where SLURM runs the job (ranks, world size
    and the master address still come from SLURM's variables)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


PREEMPTIONS_FILE = "preemptions.jsonl"


def termination_signals() -> tuple[int, ...]:
    """SIGTERM and SIGINT; in a submitit job only SIGINT, since SLURM sends SIGTERM around a requeue and
    submitit's own handler passes over it there (preemption is the USR2 path above)."""
    return (signal.SIGINT,) if in_submitit_job() else (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so no `except Exception`
    on the way (a sweep cell's failure handling, a library's) takes it for an ordinary failure.
    `checkpoint` is the last.ckpt written at `step` (None: nothing was saved for this signal)."""

    def __init__(self, signum: int, step: int | None = None, max_steps: int | None = None,
                 checkpoint: str | None = None):
        self.signum, self.step, self.max_steps, self.checkpoint = int(signum), step, max_steps, checkpoint
        where = f" at step {step} of {max_steps}" if step is not None else ""
        super().__init__(f"terminated by {self.signal_name}{where}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "killed by signal N"

    def record(self) -> dict[str, Any]:
        return {"status": "terminated", "signal": self.signal_name, "step": self.step, "max_steps": self.max_steps,
                "checkpoint": self.checkpoint}


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Terminated for the duration (signal handlers exist only in the main thread:
    elsewhere, e.g. a joblib thread, the process keeps its handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {s: signal.getsignal(s) for s in termination_signals()}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StepEndSignal(pl.Callback):
    """Holds a signal that arrives during training until the optimizer step in flight ends, writes last.ckpt
    at that step through `checkpoint` (runner's LastCheckpoint: the same file and state as the periodic saves,
    so a resumed run ends bit-identical to an uninterrupted one), then calls `after_save`. Outside training
    the signal goes to `outside_training` at once: the last checkpoint already holds everything trained."""

    signals: tuple[int, ...] = ()

    def __init__(self, checkpoint: Any, run_dir: str | Path):
        self.checkpoint = checkpoint
        self.run_dir = Path(run_dir)
        self.previous: dict[int, Any] = {}
        self.pending: tuple[int, Any] | None = None
        self.training = False
        self.step_at_batch_start = 0

    def install(self) -> None:
        if not self.previous:
            self.previous = {s: signal.getsignal(s) for s in self.signals}
            for s in self.signals:
                signal.signal(s, self.on_signal)

    def uninstall(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.training and self.pending is None:
            log.warning("%s: checkpointing at the end of the optimizer step in flight, then %s",
                        signal.Signals(signum).name, self.then)
            self.pending = (signum, frame)
        else:
            self.outside_training(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training = False
        if self.pending is not None:  # the signal came during the last step
            self.save_and_act(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Only at an optimizer step boundary: mid-accumulation, the gradients so far are in no checkpoint.
        if self.pending is None or trainer.global_step == self.step_at_batch_start:
            return
        self.training = False
        self.save_and_act(trainer)

    def save_and_act(self, trainer: pl.Trainer) -> None:
        # Lightning runs checkpoint callbacks last, so at on_train_end the final save has not happened yet.
        if self.checkpoint._last_global_step_saved != trainer.global_step:
            self.checkpoint._save_last_checkpoint(trainer, self.checkpoint._monitor_candidates(trainer))
        signum, frame = self.pending
        self.pending = None
        self.after_save(trainer, signum, frame)

    then = ""

    def outside_training(self, signum: int, frame: Any) -> None:
        raise NotImplementedError

    def after_save(self, trainer: pl.Trainer, signum: int, frame: Any) -> None:
        raise NotImplementedError


class PreemptionCheckpoint(StepEndSignal):
    """On the preemption signal: checkpoint at the end of the step in flight, note it in
    <run_dir>/preemptions.jsonl, then call the handler that was installed before (submitit's: requeue and exit)."""

    then = "requeueing"

    def __init__(self, checkpoint: Any, run_dir: str | Path):
        super().__init__(checkpoint, run_dir)
        self.signum = preempt_signal()
        self.signals = (self.signum,)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.install()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.uninstall()

    def hand_over(self, signum: int, frame: Any) -> None:
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    outside_training = hand_over

    def after_save(self, trainer: pl.Trainer, signum: int, frame: Any) -> None:
        if trainer.is_global_zero:
            entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "signal": signal.Signals(signum).name,
                     "step": trainer.global_step, "checkpoint": self.checkpoint.last_model_path}
            with (self.run_dir / PREEMPTIONS_FILE).open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        print(f"[run] preempted: checkpoint at step {trainer.global_step} written; handing over to the requeue",
              flush=True)
        self.hand_over(signum, frame)


class TerminationCheckpoint(StepEndSignal):
    """SIGTERM / SIGINT during training: checkpoint at the end of the step in flight, then raise Terminated.
    Installed at the start of training, after Lightning has registered its own SIGTERM handler, which it
    displaces (and puts back at the end)."""

    then = "stopping"

    def __init__(self, checkpoint: Any, run_dir: str | Path):
        super().__init__(checkpoint, run_dir)
        self.signals = termination_signals()
        self.max_steps: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self.install()
        self.max_steps = trainer.max_steps

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.uninstall()

    def outside_training(self, signum: int, frame: Any) -> None:
        # A second signal while one is held, or one after training: stop now (the last save stands).
        saved = self.checkpoint.last_model_path or None
        step = self.checkpoint._last_global_step_saved if saved else None
        raise Terminated(signum, step, self.max_steps, saved)

    def after_save(self, trainer: pl.Trainer, signum: int, frame: Any) -> None:
        raise Terminated(signum, trainer.global_step, trainer.max_steps, self.checkpoint.last_model_path)
