"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

import json
from pathlib import Path

B2, B7 = "qwen2_vl_2b_instruct", "qwen2_vl_7b_instruct"


LEGACY = object()  # a run written before the evaluation recorded its protocol: no "protocol" key


def summary(accuracy: float, protocol: object) -> dict:
    """One per-task summary as results.json["after"][task] holds it."""
    out = {"n": 200, "correct": round(200 * accuracy), "accuracy": accuracy, "format_rate": 1.0,
           "parse_failure_rate": 0.0, "mean_completion_tokens": 40.0, "mean_completion_chars": 120.0}
    if protocol is not LEGACY:
        out["protocol"] = protocol
    return out


def write_run(grid: Path, row: str, task: str | None, seed: int | None, acc: dict[str, float],
              protocol: object = "r1v", model: str = B2) -> Path:
    """A finished run directory (results.json only) as the runner writes it."""
    train = row != "base"
    name = f"{task}_{row}_{model}_seed{seed}" if train else f"base_{model}"
    payload = {"run_name": name, "mode": "train" if train else "eval", "model": model, "sweep": grid.name,
               "cell": row, "task": task if train else None, "method": row if train else None,
               "kl": row if train else None, "seed": seed if train else None, "tag": None,
               "eval_tasks": list(acc),
               "before": {t: summary(0.1, protocol) for t in acc} if train else None,
               "after": {t: summary(a, protocol) for t, a in acc.items()},
               "train": {"steps": 10, "seconds": 5.0} if train else None,
               "seconds": 6.0, "hardware": {"accelerator": "cuda", "devices": 1}}
    run_dir = grid / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(payload))
    return run_dir


# Means over seeds on the trained task, chosen so the gains are round numbers:
# counting: GRPO-D 0.75, SFT 0.60, GRPO 0.50 -> +25.00% and +50.00%
# geometry: GRPO-D 0.33, SFT 0.30, GRPO 0.40 -> +10.00% and -17.50%
SEEDS = {
    "counting": {"grpo_d": (0.80, 0.70), "sft": (0.55, 0.65), "grpo": (0.50, 0.40, 0.60)},
    "geometry": {"grpo_d": (0.32, 0.34), "sft": (0.30,), "grpo": (0.45, 0.35)},
}


def write_grid(grid: Path, protocol: object = "r1v", model: str = B2) -> Path:
    write_run(grid, "base", None, None, {"counting": 0.40, "geometry": 0.15}, protocol, model)
    for task, methods in SEEDS.items():
        other = "geometry" if task == "counting" else "counting"
        for method, values in methods.items():
            for seed, value in enumerate(values, 1):
                write_run(grid, method, task, seed, {task: value, other: 0.2}, protocol, model)
    return grid
