"""Relative change as the paper defines it: (x - y) / y, where y is the baseline (base model, SFT, GRPO).

The paper reports these in percent with two decimals ("GRPO-D improves over GRPO by 18.60%"); the report
uses the same convention so our numbers and the paper's are comparable.
"""

from __future__ import annotations

import math


def relative_change(x: float, baseline: float) -> float:
    """(x - baseline) / baseline; NaN when the baseline is 0 or either value is missing."""
    if x is None or baseline is None or baseline == 0 or math.isnan(x) or math.isnan(baseline):
        return math.nan
    return (x - baseline) / baseline


def format_relative(change: float) -> str:
    """+18.60% / -77.77%; "n/a" when undefined (a zero or missing baseline)."""
    return "n/a" if math.isnan(change) else f"{100 * change:+.2f}%"
