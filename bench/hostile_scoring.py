"""Worst scoring time per item on hostile completions (the scorers' latency budget in a GRPO step).

    python bench/hostile_scoring.py [--generated 2000] [--out bench/results/hostile_scoring.json]

Scores every hand-written hostile output of tests/rewards/test_hostile_completions.py (100,000-character
outputs, unclosed and repeated tags, 20,000 listed numbers, a 50,000-digit number, LaTeX fragments,
...) and --generated random tag-soup completions with both scorers under both scoring protocols (r1v,
normalized) and the format check, after one warm-up call (math-verify's import), and records the worst
and median time per item.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from _config import ROOT

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hostile_scoring.json"))
    args = parser.parse_args()

    from test_hostile_completions import HOSTILE, PIECES

    from othink_mr1.rewards.base import PROTOCOLS
    from othink_mr1.rewards.format import format_ok
    from othink_mr1.rewards.scorers import get_scorer

    rng = random.Random(0)
    generated = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60))) for _ in range(args.generated)]
    truths = {"counting": "3", "geometry": "70°"}
    for scorer in truths:  # warm-up: math-verify and sympy import on first use
        get_scorer(scorer).score("<answer>1</answer>", truths[scorer])
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
               "hostile_cases": len(HOSTILE), "generated_cases": len(generated), "scorers": {}}
    for (scorer, truth), protocol in ((item, p) for item in truths.items() for p in PROTOCOLS):
        times, worst = [], ("", 0.0)
        for name, text in [*HOSTILE.items(), *((f"generated {i}", t) for i, t in enumerate(generated))]:
            started = time.perf_counter()
            get_scorer(scorer, protocol).score(text, truth)
            format_ok(text)
            elapsed = time.perf_counter() - started
            times.append(elapsed)
            if elapsed > worst[1]:
                worst = (name, elapsed)
        key = f"{scorer}/{protocol}"
        summary["scorers"][key] = {"worst_ms": round(1000 * worst[1], 2), "worst_case": worst[0],
                                   "median_ms": round(1000 * statistics.median(times), 3)}
        print(f"{key}: worst {1000 * worst[1]:.1f} ms per item ({worst[0]}), median {1000 * statistics.median(times):.3f} ms")
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
