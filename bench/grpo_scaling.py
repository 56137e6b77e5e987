"""How a GRPO step's cost grows with G and with completion length, ours and TRL's; and evaluation
items per second against the batch size.

    pip install -r bench/requirements.txt
    python bench/grpo_scaling.py [--prompts 4] [--steps 2] [--threads 2] [--out-dir bench/results]

Step time (median of --steps timed steps after warm-up steps, per system and point; ours with the decode step
compiled unless --decode-compile says otherwise, its compile in the warm-up) on the same
work as bench/grpo_vs_trl.py (tiny_base, counting, beta 0.04, mu 1, completions forced to exactly
the given length):
  - against G in (2, 4, 8, 16) at 64 completion tokens;
  - against completion length in (32, 64, 128, 256) at G = 8.
Evaluation: the harness's greedy generation + scoring on 64 geometry test items at batch sizes
(1, 4, 16, 64). Writes grpo_scaling.csv, eval_scaling.csv and grpo_scaling.png.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from _config import ROOT, compose
from grpo_vs_trl import our_side, time_ours, time_trl, trl_side

GENERATIONS = (2, 4, 8, 16)
LENGTHS = (32, 64, 128, 256)
EVAL_BATCHES = (1, 4, 16, 64)


def step_times(prompts: int, generations: int, tokens: int, steps: int, decode_compile: str) -> dict[str, float]:
    args = Namespace(prompts=prompts, generations=generations, tokens=tokens, steps=steps)
    out = Path(tempfile.mkdtemp(prefix="grpo_scaling_"))
    ours = our_side(args, out, f"method.decode_compile={decode_compile}")
    trl = trl_side(args, ours, out)
    time_ours(ours, 2), time_trl(trl, 1)  # ours: two warm-up steps (the compile and every decode shape)
    return {"ours": statistics.median(time_ours(ours, steps)), "trl": statistics.median(time_trl(trl, steps))}


def eval_items_per_second(batch_sizes: tuple[int, ...], items: int = 64) -> list[dict[str, float]]:
    import torch

    from othink_mr1.data.collate import PromptCollator
    from othink_mr1.data.tasks import TaskSplit, load_split
    from othink_mr1.evaluation.harness import generate
    from othink_mr1.evaluation.metrics import score_item
    from othink_mr1.models.factory import load_model
    from othink_mr1.rewards.scorers import get_scorer

    cfg = compose("model=tiny_base", "task=geometry")
    model, processor = load_model(cfg.model, cfg.paths.cache_dir)
    model.eval()
    split = TaskSplit(cfg.task, "test", load_split(cfg.task, "test", cfg.paths.cache_dir))
    collate, scorer = PromptCollator(processor, cfg.task.prompt), get_scorer("geometry")
    examples = [split[i] for i in range(items)]
    rows = []
    for batch_size in batch_sizes:
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, items, batch_size):
                chunk = examples[start:start + batch_size]
                texts, lengths = generate(model, processor, collate(chunk), cfg.model.max_new_tokens_cap)
                for example, text, n in zip(chunk, texts, lengths):
                    score_item(scorer, text, example.answer, question=example.question, completion_tokens=n)
        seconds = time.perf_counter() - started
        rows.append({"batch_size": batch_size, "items_per_s": round(items / seconds, 2)})
        print(f"[eval] batch {batch_size}: {items / seconds:.1f} items/s", flush=True)
    return rows


def plot(rows: list[dict], eval_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, axis, fixed in ((axes[0], "generations", "64 tokens"), (axes[1], "tokens", "G = 8")):
        points = [r for r in rows if r["axis"] == axis]
        for system, style in (("ours", "o-"), ("trl", "s--")):
            ax.plot([r[axis] for r in points], [r[system] for r in points], style, label="ours" if system == "ours" else "TRL")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("G (completions per prompt)" if axis == "generations" else "completion tokens")
        ax.set_ylabel("s per optimizer step")
        ax.set_title(f"GRPO step vs {'G' if axis == 'generations' else 'length'} ({fixed})")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot([r["batch_size"] for r in eval_rows], [r["items_per_s"] for r in eval_rows], "o-")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("evaluation batch size")
    axes[2].set_ylabel("items per second")
    axes[2].set_title("evaluation throughput (geometry)")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-compile", default="on", choices=["auto", "on", "off"])
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--eval-only", action="store_true", help="keep --out-dir's grpo_scaling.csv, redo the rest")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    rows = []
    points = [("generations", g, g, 64) for g in GENERATIONS] + [("tokens", t, 8, t) for t in LENGTHS]
    if args.eval_only:
        with (out_dir / "grpo_scaling.csv").open() as fh:
            rows = [{k: float(v) if k in ("ours", "trl", "ratio") else (v if k == "axis" else int(v)) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
        points = []
    for axis, value, generations, tokens in points:
        times = step_times(args.prompts, generations, tokens, args.steps, args.decode_compile)
        rows.append({"axis": axis, "generations": generations, "tokens": tokens, "prompts": args.prompts,
                     "ours": round(times["ours"], 3), "trl": round(times["trl"], 3),
                     "ratio": round(times["ours"] / times["trl"], 3)})
        print(f"[grpo] {axis}={value}: ours {times['ours']:.3f} s/step, TRL {times['trl']:.3f} s/step", flush=True)
    if points:
        with (out_dir / "grpo_scaling.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    eval_rows = eval_items_per_second(EVAL_BATCHES)
    with (out_dir / "eval_scaling.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["batch_size", "items_per_s"])
        writer.writeheader()
        writer.writerows(eval_rows)
    plot(rows, eval_rows, out_dir / "grpo_scaling.png")
    print(f"written: {out_dir / 'grpo_scaling.csv'}, {out_dir / 'eval_scaling.csv'}, {out_dir / 'grpo_scaling.png'}")


if __name__ == "__main__":
    main()
