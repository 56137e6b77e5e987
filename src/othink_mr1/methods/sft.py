"""Supervised fine-tuning: cross-entropy on the assistant reply (the `solution`, or thinking +
solution), AdamW with warmup and a cosine/linear decay, gradient clipping by the Trainer."""

from __future__ import annotations

from typing import Any

import torch

from .base import VLMModule
from .schedules import build_scheduler


class SFTModule(VLMModule):
    def __init__(self, model: torch.nn.Module, processor: Any, method: Any, total_steps: int, **eval_kwargs: Any):
        super().__init__(model, processor, **eval_kwargs)
        self.method = method
        self.total_steps = total_steps
        self.samples_seen = 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = self.model_inputs(batch)
        loss = self.model(**inputs).loss
        self.samples_seen += int(inputs["input_ids"].shape[0]) * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("progress/samples", float(self.samples_seen), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Norm before clipping: what the clipping threshold is compared with.
        norms = [p.grad.detach().norm(2) for p in self.trainable_parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)), on_step=True, on_epoch=False)

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.method
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=m.lr, weight_decay=m.weight_decay,
                                      betas=tuple(m.adam_betas))
        scheduler = build_scheduler(optimizer, self.total_steps, m.warmup_ratio, m.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
