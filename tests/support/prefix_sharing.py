"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

from conftest import CACHE, compose_config

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split

G = 4


def prompt_batch(processor, task_name: str, n: int = 3):
    """A left-padded prompt batch of `n` train prompts (with their images) of a synthetic task."""
    task = compose_config([f"task={task_name}"]).task
    split = TaskSplit(task, "train", load_split(task, "train", str(CACHE)))
    collate = PromptCollator(processor, task.prompt)
    # Prompts of different lengths, so left padding is exercised.
    chosen, lengths = [], set()
    for index in range(len(split)):
        length = int(collate([split[index]])["input_ids"].shape[1])
        if length not in lengths or len(lengths) == 2:
            chosen.append(split[index])
            lengths.add(length)
        if len(chosen) == n:
            return collate(chosen)
    raise AssertionError(f"{task_name}: fewer than {n} prompts")
