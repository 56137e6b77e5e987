"""SFT as the runner sees it (methods/method.py): supervised micro-batches, each seen once, with
Lightning's automatic optimization accumulating and clipping. Torch-free (see method.py)."""

from __future__ import annotations

import functools
from typing import Any

from ..utils.errors import ConfigError
from .method import Method


def train_collator(m: Any) -> Any:
    """Prompt + target with labels on the reply (or on every text token: method.loss_on)."""
    from ..data.collate import SFTCollator

    return functools.partial(SFTCollator, loss_on=m.loss_on)


def budget_line(m: Any, b: Any, run: str, kl_name: str) -> str:
    return (f"{m.name}: {m.batch_size} samples/device x {m.accumulate_grad_batches} accumulation x "
            f"{b.processes} process(es) = {b.samples_per_step} samples per optimizer step; {run}")


def check(cfg: Any) -> None:
    m = cfg.method
    if m.target not in ("auto", "solution", "thinking_solution"):
        raise ConfigError(f"method.target='{m.target}': expected auto, solution or thinking_solution")
    if m.loss_on not in ("assistant", "all"):
        raise ConfigError(f"method.loss_on='{m.loss_on}': expected assistant or all")
    if cfg.kl.name != "none":
        raise ConfigError(f"kl={cfg.kl.name} applies to GRPO only: SFT has no KL term (drop kl= or use method=grpo)")


METHOD = Method(
    name="sft",
    module="othink_mr1.methods.sft.SFTModule",
    schema="othink_mr1.config.SFTConfig",
    train_collator=train_collator,
    updates_per_batch=lambda m: 1,
    budget_line=budget_line,
    check=check,
    tag=lambda kl: "sft",  # SFT has no KL term (check refuses another kl=)
    # Lightning accumulates the micro-batches and clips the gradient before each optimizer step.
    trainer_settings=lambda m: dict(accumulate_grad_batches=m.accumulate_grad_batches, gradient_clip_val=m.max_grad_norm),
)
