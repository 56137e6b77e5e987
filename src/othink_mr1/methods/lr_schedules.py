"""Learning-rate schedules: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("cosine", "linear", "constant")


def check_lr_schedule(kind: str) -> None:
    if kind not in LR_SCHEDULES:
        raise ValueError(f"method.lr_schedule='{kind}': expected one of {list(LR_SCHEDULES)}")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Factor on the base lr at optimizer step `step` (0-based)."""
    check_lr_schedule(kind)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, kind: str):
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps, warmup, kind))
