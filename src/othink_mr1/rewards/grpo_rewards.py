"""Reward functions for GRPO: each `f(completions, **columns) -> list[float]`, one value per completion.

`columns` are keyword lists with one value per completion (a prompt's G completions in a row), as TRL
passes a dataset's columns: every field of the prompt's record, by its column name (each column of the
row but the image ones: `problem`, `solution`, `ground_truth`, geometry's `family`, ...; None where the
record lacks one), and `answer` (the ground truth as text), `question`, `scorer` (the task's) and
`protocol` (the run's scoring protocol, `eval.protocol`; `r1v` when absent), which win over a record field
of the same name. So a reward that reads a column, `def f(completions, *, difficulty, **_)`, needs only
its entry in REWARDS below: no trainer or collator change (methods/grpo.py: reward_columns). Chosen and
weighted in config (`method.rewards: {accuracy: 1.0, format: 1.0}`); the total is the weighted sum
(R = R_acc + alpha * R_format in the paper, alpha = 1).
"""

from __future__ import annotations

from typing import Any, Callable

from .base import DEFAULT_PROTOCOL
from .format import format_ok
from .scorers import get_scorer

RewardFn = Callable[..., list[float]]


def accuracy(completions: list[str], *, answer: list[Any], scorer: list[str], protocol: list[str] | None = None,
             **_: Any) -> list[float]:
    """1.0 where the answer inside the `<answer>` tags is correct under the run's scoring protocol (the
    scorer the evaluation harness uses). An answer outside the tags earns nothing here, although R1-V's
    geometry evaluation would count it (see `accuracy_r1v`); so this never pays more than the
    evaluation's verdict, under either protocol."""
    protocols = protocol if protocol is not None else [DEFAULT_PROTOCOL] * len(completions)
    return [get_scorer(name, p).reward(c, gt) for c, gt, name, p in zip(completions, answer, scorer, protocols,
                                                                           strict=True)]


def accuracy_r1v(completions: list[str], *, answer: list[Any], scorer: list[str], **_: Any) -> list[float]:
    """R1-V's training reward exactly: the `r1v` protocol's evaluation verdict (the same scorer call),
    whatever the run's protocol; for geometry it parses the whole output, untagged or not. For
    reproducing R1-V's training signal (`method.rewards={accuracy_r1v: 1.0, format: 1.0}`); it pays a
    policy that skips the tags."""
    return [1.0 if get_scorer(name, "r1v").score(c, gt).correct else 0.0
            for c, gt, name in zip(completions, answer, scorer, strict=True)]


def format(completions: list[str], **_: Any) -> list[float]:  # noqa: A001 - the reward's name in configs
    """1.0 where the whole completion is `<think>...</think> <answer>...</answer>` (R1-V's rule)."""
    return [1.0 if format_ok(c) else 0.0 for c in completions]


REWARDS: dict[str, RewardFn] = {"accuracy": accuracy, "accuracy_r1v": accuracy_r1v, "format": format}


def check_reward_names(names: Any) -> None:
    unknown = sorted(set(names) - set(REWARDS))
    if unknown:
        raise ValueError(f"method.rewards: unknown reward(s) {unknown}; available: {sorted(REWARDS)}")


def compute_rewards(weights: dict[str, float], completions: list[str], **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each reward's values by name)."""
    check_reward_names(weights)
    parts = {name: REWARDS[name](completions, **columns) for name in weights}
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    return total, parts
