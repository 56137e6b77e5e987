"""The scorer registry: a scorer name (a task config's ``scorer:``, ``counting`` or ``geometry``) and a scoring
protocol (``r1v`` or ``normalized``, see rewards/base.py) -> the scorer.

The scorers live beside it: counting.py (R1-V's counting rule), geometry.py (GeoQA under both protocols);
format.py holds R1-V's format rule and the ``<answer>`` span they read. A task names its scorer only in its
config (conf/task/<name>.yaml); nothing here knows task names.

``get_scorer(scorer_name, protocol)`` builds the scorer. Every scorer exposes ``score(completion,
ground_truth) -> Score`` (the evaluation's verdict) and ``reward(completion, ground_truth) -> float`` (the
training reward: the same verdict, but never paying an answer given outside the ``<answer>`` tags). They are
pure Python (plus sympy via math-verify) on purpose: the offline rescore CLI imports this module and must
start fast, so nothing here may import torch/transformers/datasets.
"""

from __future__ import annotations

import functools
from typing import Callable

from .base import DEFAULT_PROTOCOL, PROTOCOLS, Scorer, check_protocol
from .counting import CountingScorer
from .geometry import NormalizedGeometryScorer, R1VGeometryScorer

__all__ = ["SCORERS", "get_scorer"]

#: Scorer name -> protocol -> scorer factory.
SCORERS: dict[str, dict[str, Callable[[], Scorer]]] = {
    "counting": {protocol: functools.partial(CountingScorer, protocol) for protocol in PROTOCOLS},
    "geometry": {"r1v": R1VGeometryScorer, "normalized": NormalizedGeometryScorer},
}


def get_scorer(name: str, protocol: str = DEFAULT_PROTOCOL) -> Scorer:
    """The scorer named ``name`` (``counting`` or ``geometry``, a task config's ``scorer``) under a scoring
    protocol (``r1v`` or ``normalized``, see :data:`~othink_mr1.rewards.base.PROTOCOLS`). Unknown names raise
    a ValueError listing the valid ones."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(sorted(SCORERS))}")
    return SCORERS[name][check_protocol(protocol)]()
