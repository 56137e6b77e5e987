"""Checkpoint files that are never half-written: a kill during a save leaves the previous checkpoint.

The checkpoint is written to a temporary file beside the target (same folder, so same filesystem),
flushed to disk, then renamed over the target with os.replace, which is atomic on POSIX. Lightning's
own writer goes through an fsspec transaction whose temporary file lives in the system temp folder; when
that is another filesystem its final move is a copy, which a kill can cut short.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
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
