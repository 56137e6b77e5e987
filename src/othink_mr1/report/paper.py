"""OThink-MR1's published numbers (arXiv 2503.16081 v2), for `--paper` columns and for tests.

Accuracy in percent. Table 1 is printed in the paper. The cross-task values are not printed: the paper
gives relative changes only, and the absolute values here are the ones those changes imply (they
reproduce every stated percentage, see tests/report/test_report_relative.py).
"""

from __future__ import annotations

# model -> method -> task -> accuracy (%). "base" is the model before training.
TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "qwen2_vl_2b_instruct": {
        "base": {"counting": 42.50, "geometry": 15.52},
        "grpo": {"counting": 64.50, "geometry": 30.24},
        "sft": {"counting": 68.50, "geometry": 32.49},
        "grpo_d": {"counting": 76.50, "geometry": 34.35},
    },
    "qwen2_vl_7b_instruct": {
        "base": {"counting": 76.00, "geometry": 33.16},
        "grpo": {"counting": 76.50, "geometry": 42.04},
        "sft": {"counting": 74.50, "geometry": 43.50},
        "grpo_d": {"counting": 78.00, "geometry": 45.49},
    },
}

# Qwen2-VL-2B, (train task, eval task) -> method -> accuracy (%), implied by the stated relative changes.
CROSS_TASK_2B: dict[tuple[str, str], dict[str, float]] = {
    ("geometry", "counting"): {"base": 42.50, "sft": 43.00, "grpo_d": 69.50},
    ("counting", "geometry"): {"base": 15.52, "sft": 3.45, "grpo_d": 16.18},
}

# The model the stated relative changes are about (the paper states none for 7B; its Table 1 implies them).
STATED_MODEL = "qwen2_vl_2b_instruct"

# Relative changes the paper states in its text, in percent: (comparison, task or (train, eval)) -> value.
STATED_RELATIVE: dict[tuple[str, object], float] = {
    ("grpo_d vs grpo", "counting"): 18.60,
    ("grpo_d vs grpo", "geometry"): 13.59,
    ("grpo_d vs sft", "counting"): 11.68,
    ("grpo_d vs sft", "geometry"): 5.72,
    ("grpo_d vs base", ("geometry", "counting")): 63.53,
    ("grpo_d vs sft", ("geometry", "counting")): 61.63,
    ("sft vs base", ("counting", "geometry")): -77.77,
    ("grpo_d vs base", ("counting", "geometry")): 4.25,
    ("grpo_d vs sft", ("counting", "geometry")): 368.99,
}
