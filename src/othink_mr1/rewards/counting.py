"""Counting (SuperCLEVR / CLEVR, and the synthetic counting tasks): R1-V's rule under both scoring protocols.

The first ``<answer> N </answer>`` with an integer inside must equal the integer ground truth. It already
reproduces R1-V's counting verdicts exactly, so ``r1v`` and ``normalized`` judge alike; the protocol is
only recorded, so that results say which one the run used.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from .base import DEFAULT_PROTOCOL, Score, check_protocol

__all__ = ["CountingScorer"]

# R1-V's counting rule: an integer, alone (modulo whitespace) inside the answer tags. ASCII digits only:
# Python's \d also takes other scripts' digits, which int() would read as a count.
_COUNT_ANSWER = re.compile(r"<answer>\s*([0-9]+)\s*</answer>")


def _integer_ground_truth(ground_truth: Any) -> int:
    """Coerce a counting ground truth (``7``, ``"7"``, ``" 7 "``) to int; anything else is an error.

    Raising instead of scoring "wrong" matters: a mis-wired data field would otherwise silently give
    zero accuracy/reward.
    """
    if isinstance(ground_truth, bool):  # bool is an int subclass; True is not a count
        raise ValueError(f"counting ground truth must be an integer, got {ground_truth!r}")
    if isinstance(ground_truth, int):
        return ground_truth
    if isinstance(ground_truth, str) and re.fullmatch(r"\s*[+-]?\d+\s*", ground_truth):
        return int(ground_truth)
    raise ValueError(f"counting ground truth must be an integer, got {ground_truth!r}")


class CountingScorer:
    """R1-V counting rule: first ``<answer> N </answer>`` (integer only) equals the ground truth.

    The same rule under both protocols (it already reproduces R1-V's counting verdicts exactly):
    `protocol` is only recorded, so that results say which protocol the run used."""

    name: ClassVar[str] = "counting"

    def __init__(self, protocol: str = DEFAULT_PROTOCOL) -> None:
        self.protocol = check_protocol(protocol)

    def score(self, completion: str, ground_truth: Any) -> Score:
        expected = _integer_ground_truth(ground_truth)
        match = _COUNT_ANSWER.search(completion)
        if match is None:
            return Score(correct=False, extracted=None, parsed=False)
        # Compared as digit strings: int() refuses numbers over 4,300 digits, which a policy can emit.
        value = match.group(1).lstrip("0") or "0"
        return Score(correct=value == str(expected), extracted=match.group(1)[:64], parsed=True)

    def reward(self, completion: str, ground_truth: Any) -> float:
        return 1.0 if self.score(completion, ground_truth).correct else 0.0

    def check_ground_truth(self, ground_truth: Any) -> str | None:
        """An integer, by the rule `score` applies (`_integer_ground_truth`), so the two cannot disagree."""
        try:
            _integer_ground_truth(ground_truth)
        except ValueError as exc:
            return str(exc)
        return None
