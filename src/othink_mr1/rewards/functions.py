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
    """1.0 where the answer inside the `<answer>` tags is correct, judged by the task's scorer (the one
    the evaluation harness uses). An answer outside the tags earns nothing here, although R1-V's
    geometry evaluation would count it (see `accuracy_r1v`)."""
    return [get_scorer(name).reward(c, gt) for c, gt, name in zip(completions, answer, scorer)]


def accuracy_r1v(completions: list[str], *, answer: list[Any], scorer: list[str], **_: Any) -> list[float]:
    """R1-V's training reward exactly: the evaluation's verdict, which for geometry parses an untagged
    output whole. For reproducing R1-V's training signal (`method.rewards={accuracy_r1v: 1.0,
    format: 1.0}`); it pays a policy that skips the tags."""
    return [1.0 if get_scorer(name).score(c, gt).correct else 0.0 for c, gt, name in zip(completions, answer, scorer)]


def format(completions: list[str], **_: Any) -> list[float]:  # noqa: A001 - the reward's name in configs
    """1.0 where the whole completion is `<think>...</think> <answer>...</answer>` (R1-V's rule)."""
    return [1.0 if format_ok(c) else 0.0 for c in completions]


REWARDS: dict[str, RewardFn] = {"accuracy": accuracy, "accuracy_r1v": accuracy_r1v, "format": format}


def compute_rewards(weights: dict[str, float], completions: list[str], **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each reward's values by name)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"method.rewards: unknown reward(s) {unknown}; available: {sorted(REWARDS)}")
    parts = {name: REWARDS[name](completions, **columns) for name in weights}
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    return total, parts
