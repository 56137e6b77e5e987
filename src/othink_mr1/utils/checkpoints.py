"""Checkpoint files that are never half-written: a kill during a save leaves the previous checkpoint.

The checkpoint is written to a temporary file beside the target (same folder, so same filesystem),
flushed to disk, then renamed over the target with os.replace, which is atomic on POSIX. Lightning's
own writer goes through an fsspec transaction whose temporary file lives in the system temp folder; when
that is another filesystem its final move is a copy, which a kill can cut short.

LastCheckpoint decides when: last.ckpt at the save interval, and the final state exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of saves that were killed: never read, removed at the next save.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


class LastCheckpoint(ModelCheckpoint):
    """<dirpath>/last.ckpt every `every_n_train_steps` optimizer steps (never, when None) and once more at
    the end of training unless that step was just saved: the final state is written exactly once.

    Lightning's own end-of-training save only runs when nothing was saved before, and a save after
    fit() would repeat the last interval save (a full model + optimizer state: gigabytes at scale).
    The name never gets a version suffix: last.ckpt is the file `resume=` and `ckpt=` read.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None):
        super().__init__(dirpath=str(dirpath), save_last=True, save_top_k=0, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps or 0, every_n_epochs=0)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        # Resumed from this very file: it already holds the step training restarts at.
        resumed = trainer.ckpt_path
        if resumed and Path(resumed).resolve() == (Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt").resolve():
            self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
