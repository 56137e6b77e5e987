"""Preemption and time limits on SLURM: the current step is checkpointed before the job is requeued.

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
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

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


class PreemptionCheckpoint(pl.Callback):
    """On the preemption signal: finish the optimizer step in flight, write last.ckpt at that step through
    `checkpoint` (runner's LastCheckpoint), note it in <run_dir>/preemptions.jsonl, then call the handler that
    was installed before (submitit's: requeue and exit)."""

    def __init__(self, checkpoint: Any, run_dir: str | Path):
        self.checkpoint = checkpoint
        self.run_dir = Path(run_dir)
        self.signum = preempt_signal()
        self.previous: Any = None
        self.pending: tuple[int, Any] | None = None
        self.training = False
        self.step_at_batch_start = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.previous is None:
            self.previous = signal.getsignal(self.signum)
            signal.signal(self.signum, self.on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.previous is not None and stage == "fit":
            signal.signal(self.signum, self.previous)
            self.previous = None

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.training:
            log.warning("%s: checkpointing at the end of the optimizer step in flight, then requeueing",
                        signal.Signals(signum).name)
            self.pending = (signum, frame)
        else:
            self.hand_over(signum, frame)

    def hand_over(self, signum: int, frame: Any) -> None:
        if callable(self.previous):
            self.previous(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training = False
        if self.pending is not None:  # the signal came during the last step: the final save covers it
            signum, frame = self.pending
            self.pending = None
            self.hand_over(signum, frame)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Only at an optimizer step boundary: mid-accumulation, the gradients so far are in no checkpoint.
        if self.pending is None or trainer.global_step == self.step_at_batch_start:
            return
        if self.checkpoint._last_global_step_saved != trainer.global_step:
            self.checkpoint._save_last_checkpoint(trainer, self.checkpoint._monitor_candidates(trainer))
        signum, frame = self.pending
        if trainer.is_global_zero:
            entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "signal": signal.Signals(signum).name,
                     "step": trainer.global_step, "checkpoint": self.checkpoint.last_model_path}
            with (self.run_dir / PREEMPTIONS_FILE).open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        print(f"[run] preempted: checkpoint at step {trainer.global_step} written; handing over to the requeue",
              flush=True)
        self.pending = None
        self.training = False
        self.hand_over(signum, frame)
