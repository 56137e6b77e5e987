"""Evaluation throughput of the harness on tiny_base: items per second, batched vs one at a time.

    python bench/eval_throughput.py [--items 64] [--batch-size 16] [--threads 2]

Runs the same greedy generation + scoring the harness does (PromptCollator -> generate -> scorer) on
the first N items of each synthetic test split, first one item per call, then in batches, checks
that both give the same completions, and writes bench/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _config import ROOT, compose  # noqa: E402  (bench/ is the script's directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64, help="items per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=os.environ.get("OTHINK_CACHE", str(ROOT / ".cache")))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_throughput.json"))
    args = parser.parse_args()

    import torch
    from othink_mr1.data.collate import PromptCollator
    from othink_mr1.data.tasks import TaskSplit, load_split
    from othink_mr1.evaluation.harness import generate
    from othink_mr1.evaluation.metrics import score_item, summarize
    from othink_mr1.models.factory import load_model
    from othink_mr1.rewards.scorers import get_scorer
    from othink_mr1.utils.quiet import quiet_third_party

    quiet_third_party()
    torch.set_num_threads(args.threads)
    cfg = compose("model=tiny_base")
    model_cfg = cfg.model
    model, processor = load_model(model_cfg, args.cache)
    model.eval()

    def run(examples, task, batch_size):
        collate = PromptCollator(processor, task.prompt)
        scorer = get_scorer(task.scorer)
        texts, items = [], []
        start = time.perf_counter()
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            outputs, lengths = generate(model, processor.tokenizer, collate(chunk), model_cfg.max_new_tokens_cap)
            texts += outputs
            items += [score_item(scorer, o, ex.answer, ex.question, n) for o, ex, n in zip(outputs, chunk, lengths)]
        return time.perf_counter() - start, texts, summarize(items)

    report = {"model": "tiny_base", "items_per_task": args.items, "batch_size": args.batch_size,
              "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "tasks": {}}
    totals = {"one_at_a_time": [0, 0.0], "batched": [0, 0.0]}
    for name in ("counting", "geometry"):
        task = cfg.tasks[name]
        split = TaskSplit(task, "test", load_split(task, "test", args.cache))
        examples = [split[i] for i in range(min(args.items, len(split)))]
        run(examples[:2], task, 2)  # warm-up
        single_s, single_texts, single_summary = run(examples, task, 1)
        batch_s, batch_texts, batch_summary = run(examples, task, args.batch_size)
        agree = sum(a == b for a, b in zip(single_texts, batch_texts)) / len(examples)
        report["tasks"][name] = {
            "one_at_a_time_items_per_s": round(len(examples) / single_s, 2),
            "batched_items_per_s": round(len(examples) / batch_s, 2),
            "speedup": round(single_s / batch_s, 2),
            "same_completions": agree,
            "accuracy_one_at_a_time": single_summary["accuracy"],
            "accuracy_batched": batch_summary["accuracy"],
            "mean_completion_tokens": batch_summary["mean_completion_tokens"],
        }
        totals["one_at_a_time"][0] += len(examples)
        totals["one_at_a_time"][1] += single_s
        totals["batched"][0] += len(examples)
        totals["batched"][1] += batch_s
    report["overall"] = {k: round(n / s, 2) for k, (n, s) in totals.items()}
    report["overall"]["speedup"] = round(totals["one_at_a_time"][1] / totals["batched"][1], 2)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
