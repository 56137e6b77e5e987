"""95% intervals over seeds and the paper's claims as paired differences (`python -m othink_mr1.report --intervals`).

A claim compares two cells of one model on one trained task, run with the same seeds: the difference of
their accuracies seed by seed (paired, so what a seed shares on both sides, its data order and its
sampling, cancels), its mean, and the Student-t 95% interval of that mean. A claim holds when the whole
interval is above zero, does not hold when it is below, and is inconclusive when it contains zero; with
fewer than two pairs there is no interval. Pure Python: the t quantile comes from the regularized
incomplete beta function, not scipy.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

# The paper's claims: (claim, better cell, other cell, scored on the trained task (True) or the other (False)).
CLAIMS = (
    ("GRPO-D > GRPO (same task)", "grpo_d", "grpo", True),
    ("GRPO-D > SFT (same task)", "grpo_d", "sft", True),
    ("GRPO-D > SFT (cross-task)", "grpo_d", "sft", False),
    ("GRPO > SFT (cross-task)", "grpo", "sft", False),
)
LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t (bisection on t_cdf; |error| < 1e-10; cached: a report asks for a few)."""
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "no interval (fewer than 2 seeds)"
        return "holds" if self.low > 0 else "does not hold" if self.high < 0 else "inconclusive"

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        if self.n < 2:
            return f"{scale * self.mean:.{digits}f} (n={self.n})"
        return f"{scale * self.mean:.{digits}f} [{scale * self.low:.{digits}f}, {scale * self.high:.{digits}f}] (n={self.n})"


def mean_interval(values: list[float], level: float = LEVEL) -> Interval:
    """Mean and the two-sided Student-t interval at `level` (a point when n < 2)."""
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    if n < 2:
        return Interval(mean, mean, mean, n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(better: dict[int, float], other: dict[int, float], level: float = LEVEL) -> tuple[Interval, list[int]]:
    """The interval of better - other over the seeds both have (seed -> accuracy), and those seeds."""
    seeds = sorted(set(better) & set(other))
    return mean_interval([better[s] - other[s] for s in seeds], level), seeds
