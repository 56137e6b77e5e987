"""What every scorer shares: the verdict type (:class:`Score`), the :class:`Scorer` interface, and the names
of the scoring protocols.

A *protocol* decides how a completion is judged; every run names one (config ``eval.protocol``,
:data:`PROTOCOLS`), and every per-task summary and completions.jsonl record says which it used:

``r1v`` (the default; the paper's protocol)
    R1-V's evaluation exactly, so accuracies compare with the paper's.
``normalized``
    The project's earlier geometry scorer: it reads the ``<answer>`` span in rewritten notation. Its numbers
    must never be reported as the paper's.

What each protocol means for a task is its scorer's business: geometry (rewards/geometry.py) differs between
them, counting (rewards/counting.py) is R1-V's rule under both. rewards/scorers.py builds a scorer by name.
Pure Python on purpose: the offline rescore CLI imports the scorers and must start fast, so nothing in
rewards/ that it reads may import torch/transformers/datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Score", "Scorer", "check_protocol"]

#: Scoring protocols by name (see the module docstring). ``r1v`` is R1-V's evaluation, the paper's.
PROTOCOLS: tuple[str, ...] = ("r1v", "normalized")
DEFAULT_PROTOCOL = "r1v"


def check_protocol(protocol: str) -> str:
    """``protocol`` if it names a scoring protocol, else a ValueError listing the valid names."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return protocol


@dataclass(frozen=True)
class Score:
    """Outcome of scoring one completion.

    ``parsed`` is False when nothing answer-like could be extracted from the completion (a parse
    failure), which is reported separately from a wrong-but-parsed answer.
    """

    correct: bool
    extracted: str | None
    parsed: bool


class Scorer(Protocol):
    """What the training reward and the evaluation code need from a scorer.

    `score` is the evaluation's verdict under the scorer's `protocol` (`r1v`: R1-V's, so accuracies
    compare with the paper's). `reward` is the training reward: the same verdict, except that it never
    pays an answer given outside the `<answer>` tags (R1-V's geometry evaluation reads an untagged
    output whole; a policy rewarded for that would learn to skip the tags). So `reward` never pays
    more than `score` under either protocol."""

    name: ClassVar[str]
    protocol: str

    def score(self, completion: str, ground_truth: Any) -> Score: ...

    def reward(self, completion: str, ground_truth: Any) -> float: ...

    def check_ground_truth(self, ground_truth: Any) -> str | None:
        """Why `ground_truth` (a record's, as the split gives it to `score`) is not one this scorer can judge
        answers against, or None when it is. The one home of the rule: every split calls it on every record
        when it is loaded (data/tasks.py `load_split`), so a bad ground truth stops a run before training,
        naming its file, line and value, instead of raising mid-run or scoring every answer wrong."""
        ...
