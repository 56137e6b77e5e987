"""Per-item evaluation records and their aggregate metrics.

Kept free of torch/transformers so the offline rescore CLI (and report code) can import it cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from othink_mr1.rewards.base import Scorer
from othink_mr1.rewards.format import format_ok

__all__ = ["CURVE_POINT_METRICS", "ItemResult", "score_item", "summarize"]

# What a training-curve point holds per eval task (evaluation/curve.py), and the names it is logged under:
# eval/<task>/<logged name> (the greedy accuracy on the curve's subset is acc_subset there, since
# eval/<task>/acc is the full split's). The report reads them back (report/runs.py).
CURVE_POINT_METRICS = {"acc": "acc_subset", "acc_sampled": "acc_sampled", "kl_to_base": "kl_to_base"}


@dataclass
class ItemResult:
    """One scored completion, as written to per-item JSONL files."""

    question: str | None
    # str for GeoQA ("140°"), int for counting (7): kept exactly as the data gave it.
    ground_truth: Any
    model_output: str
    extracted: str | None
    correct: bool
    format_ok: bool
    parsed: bool
    completion_tokens: int | None = None
    # The scoring protocol that gave `correct`/`parsed`/`extracted` ("r1v" or "normalized").
    protocol: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict whose keys are exactly the field names.

        The ground truth is kept as given (counting ground truths stay ints) unless it cannot be
        serialised, in which case its ``str`` form is stored rather than failing the whole file.
        """
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        try:
            json.dumps(record["ground_truth"])
        except (TypeError, ValueError):
            record["ground_truth"] = str(record["ground_truth"])
        return record


def score_item(
    scorer: Scorer,
    model_output: str,
    ground_truth: Any,
    question: str | None = None,
    completion_tokens: int | None = None,
) -> ItemResult:
    """Score one completion with ``scorer`` and record its format compliance and protocol alongside."""
    result = scorer.score(model_output, ground_truth)
    return ItemResult(
        question=question,
        ground_truth=ground_truth,
        model_output=model_output,
        extracted=result.extracted,
        correct=result.correct,
        format_ok=format_ok(model_output),
        parsed=result.parsed,
        completion_tokens=completion_tokens,
        protocol=scorer.protocol,
    )


def summarize(items: list[ItemResult]) -> dict[str, Any]:
    """Aggregate metrics over scored items; rates are fractions in [0, 1].

    ``protocol`` is the scoring protocol of the items (a ValueError if they mix protocols: their
    accuracies would not mean one thing). ``mean_completion_tokens`` averages only the items that carry a token count (None when none do),
    so a log mixing sources does not get a mean diluted by missing values.
    """
    if not items:
        raise ValueError("summarize() needs at least one item")
    protocols = {item.protocol for item in items}
    if len(protocols) > 1:
        raise ValueError(f"summarize() got items scored under different protocols: {sorted(map(str, protocols))}")
    n = len(items)
    correct = sum(item.correct for item in items)
    token_counts = [item.completion_tokens for item in items if item.completion_tokens is not None]
    return {
        "protocol": protocols.pop(),
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "format_rate": sum(item.format_ok for item in items) / n,
        "parse_failure_rate": sum(not item.parsed for item in items) / n,
        "mean_completion_tokens": sum(token_counts) / len(token_counts) if token_counts else None,
        "mean_completion_chars": sum(len(item.model_output) for item in items) / n,
    }
