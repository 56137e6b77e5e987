"""Does GRPO-D learn? The main job's budget (tiny_base, synthetic counting) over several seeds, for
GRPO-D (kl=grpo_d) and plain GRPO (kl=constant), against the base model.

    python bench/grpo_learning.py [--seeds 1 2 3] [--out bench/results/grpo_learning.json] [override ...]

Extra arguments are Hydra overrides applied to every run (e.g. method.lr=1e-4). Each run is a normal
run directory under a temporary output folder; the summary (mean and spread of same-task and
cross-task test accuracy per method) is printed and written to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _config import ROOT, compose

METHODS = {"grpo_d": ["kl=grpo_d"], "grpo": ["kl=constant"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_learning.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from othink_mr1.runner import run

    outputs = Path(tempfile.mkdtemp(prefix="grpo_learning_"))
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    base = None
    for seed in args.seeds:
        for method in args.methods:
            cfg = compose(*METHODS[method], f"seed={seed}", "trainer.enable_progress_bar=false", *args.overrides,
                          output_dir=outputs)
            started = time.time()
            results = run(cfg)
            base = results["before"]
            runs[method].append({"seed": seed, "after": {t: r["accuracy"] for t, r in results["after"].items()},
                                 "seconds": round(time.time() - started, 1)})
            print(f"[bench] {method} seed {seed}: {runs[method][-1]}", flush=True)

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    tasks = list(base)
    summary = {
        "config_overrides": args.overrides,
        "seeds": args.seeds,
        # Greedy evaluation of the same starting model: identical for every seed.
        "base": {t: base[t]["accuracy"] for t in tasks},
        "methods": {m: {t: spread([r["after"][t] for r in rs]) for t in tasks} for m, rs in runs.items()},
        "gain_over_base_points": {m: round(100 * (statistics.mean(r["after"][tasks[0]] for r in rs) - base[tasks[0]]["accuracy"]), 2)
                                  for m, rs in runs.items()},
        "runs": runs,
        "outputs": str(outputs),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("base", "methods", "gain_over_base_points")}, indent=2))


if __name__ == "__main__":
    main()
