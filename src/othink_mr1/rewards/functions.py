"""Reward functions for GRPO: each `f(completions, **columns) -> list[float]`, one value per completion.

`columns` are per-completion lists from the batch (`answer`, `question`, `scorer`), so a reward can
read whatever the data carries. Chosen and weighted in config (`method.rewards: {accuracy: 1.0,
format: 1.0}`); the total is the weighted sum (R = R_acc + alpha * R_format in the paper, alpha = 1).
"""

from __future__ import annotations

from typing import Any, Callable

from .scorers import format_ok, get_scorer

RewardFn = Callable[..., list[float]]


def accuracy(completions: list[str], *, answer: list[Any], scorer: list[str], **_: Any) -> list[float]:
    """1.0 where the task's scorer (the one the evaluation harness uses) marks the completion correct,
    so the training reward and the test metric can never disagree."""
    return [get_scorer(name).reward(c, gt) for c, gt, name in zip(completions, answer, scorer)]


def format(completions: list[str], **_: Any) -> list[float]:  # noqa: A001 - the reward's name in configs
    """1.0 where the whole completion is `<think>...</think> <answer>...</answer>` (R1-V's rule)."""
    return [1.0 if format_ok(c) else 0.0 for c in completions]


REWARDS: dict[str, RewardFn] = {"accuracy": accuracy, "format": format}


def compute_rewards(weights: dict[str, float], completions: list[str], **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each reward's values by name)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"method.rewards: unknown reward(s) {unknown}; available: {sorted(REWARDS)}")
    parts = {name: REWARDS[name](completions, **columns) for name in weights}
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    return total, parts
