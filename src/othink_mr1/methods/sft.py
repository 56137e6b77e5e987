"""Supervised fine-tuning: cross-entropy on the assistant reply (the `solution`, or thinking +
solution), AdamW with warmup and a cosine/linear decay, gradient clipping by the Trainer."""

from __future__ import annotations

from typing import Any

import torch

from ..data.batch_layout import model_inputs
from .evaluation_module import TrainableModule


class SFTModule(TrainableModule):
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = model_inputs(batch)
        loss = self.model(**inputs).loss
        self.samples_seen += int(inputs["input_ids"].shape[0]) * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("progress/samples", float(self.samples_seen), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Norm before clipping: what the clipping threshold is compared with. A non-finite loss shows
        # here too, as non-finite gradients.
        norm = self.grad_norm()
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        self.guard_update(grad_norm=norm)
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
