"""Batch geometry and step budget: validated before training, printed at start-up as one line.

Samples per optimizer step = batch_size x accumulate_grad_batches x processes (SFT samples; GRPO prompts,
= prompts_per_step, each expanded to num_generations completions inside its micro-batch). A method's
descriptor says how many optimizer steps each such batch serves (GRPO: num_iterations, mu; SFT: 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .methods.registry import find_method
from .utils.distributed import world_size


@dataclass
class Budget:
    processes: int
    samples_per_step: int  # SFT samples or GRPO prompts per optimizer step, all processes
    steps_per_epoch: int  # optimizer steps per pass over the train split
    total_steps: int  # optimizer steps of the run
    micro_batches: int  # training micro-batches of the run, per process (the loader's length)
    warmup_steps: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def train_budget(method: Any, trainer_cfg: Any, num_train: int) -> Budget:
    procs = world_size(trainer_cfg)
    per_step = method.batch_size * method.accumulate_grad_batches * procs
    # Each batch of accumulate_grad_batches micro-batches serves `updates` optimizer steps (GRPO's mu).
    updates = find_method(method.name).updates_per_batch(method)
    steps_per_epoch = max(1, math.ceil(num_train / per_step)) * updates
    total = method.max_steps if method.max_steps is not None else steps_per_epoch * method.epochs
    micro_batches = math.ceil(total / updates) * method.accumulate_grad_batches
    return Budget(procs, per_step, steps_per_epoch, total, micro_batches, int(round(method.warmup_ratio * total)))


def budget_line(method: Any, kl_name: str, num_train: int, budget: Budget) -> str:
    m, b = method, budget
    run = (f"{num_train} train samples -> {b.steps_per_epoch} steps/epoch; {b.total_steps} optimizer steps "
           f"({b.warmup_steps} warmup), lr {m.lr:g} {m.lr_schedule}")
    return f"[budget] {find_method(m.name).budget_line(m, b, run, kl_name)}"
