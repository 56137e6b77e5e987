"""Build a task's train or test split from its config, validated, as canonical examples."""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset as TorchDataset

from .hub import load_test_jsonl, load_train_source
from .records import (
    DataError,
    Example,
    answer_from_solution,
    check_fields,
    check_image_value,
    check_text,
    load_image,
    sft_target,
)
from .synthetic import synthetic_split

log = logging.getLogger(__name__)

SOURCES = ("synthetic_counting", "synthetic_geometry", "r1v")


def load_split(task: Any, role: str, cache_dir: str):
    """The raw `datasets.Dataset` of `task`'s "train" or "test" split, validated and subset."""
    if task.source not in SOURCES:
        raise DataError(f"task.source='{task.source}' for task '{task.name}': expected one of {list(SOURCES)}")
    split = "train" if role == "train" else "test"
    if task.source.startswith("synthetic"):
        syn = task.synthetic
        if syn is None:
            raise DataError(f"task '{task.name}': task.synthetic is required for source '{task.source}'")
        num = syn.num_train if role == "train" else syn.num_test
        if num < 1:
            key = "num_train" if role == "train" else "num_test"
            raise DataError(f"task.synthetic.{key}={num}: the {split} split of task '{task.name}' is empty")
        ds = synthetic_split(task.source, split, num, syn.seed, syn.image_size, cache_dir)
        where = f"synthetic task '{task.name}' ({split} split)"
    elif role == "train":
        if not task.train_source:
            raise DataError(f"task '{task.name}': task.train_source is not set")
        ds = load_train_source(task.train_source, task.train_split, cache_dir=f"{cache_dir}/hub")
        where = f"{task.train_source} ({task.train_split} split)"
    else:
        if not task.test_jsonl:
            raise DataError(f"task '{task.name}': task.test_jsonl is not set")
        ds = load_test_jsonl(task.test_jsonl, task.image_root)
        where = task.test_jsonl

    check_fields(ds.column_names, role, where)
    if len(ds) == 0:
        raise DataError(f"{where}: the {split} split of task '{task.name}' is empty")
    size = task.train_size if role == "train" else task.eval_size
    if size is not None:
        if size <= 0:
            key = "train_size" if role == "train" else "eval_size"
            raise DataError(f"task.{key}={size} for task '{task.name}': must be positive")
        if size < len(ds):
            # Seeded, so the same few-shot subset is drawn by every method and every rerun.
            ds = ds.shuffle(seed=task.train_subset_seed).select(range(size)) if role == "train" else ds.select(range(size))
    _validate_rows(ds, role, where)
    return ds


def _validate_rows(ds, role: str, where: str) -> None:
    """Every row has its text fields and a decodable image; errors name the row."""
    import datasets

    text_fields = ("problem", "solution") if role == "train" else ("question", "ground_truth")
    for field in text_fields:
        for row, value in enumerate(ds[field]):
            check_text(value, field, where, row)
    if "image" in ds.column_names and isinstance(ds.features.get("image"), datasets.Image):
        raw = ds.cast_column("image", datasets.Image(decode=False))
        for row, value in enumerate(raw["image"]):
            check_image_value(value, where, row)
    # JSONL test splits (image_path) were checked file by file when loaded.


class TaskSplit(TorchDataset):
    """A split as canonical `Example`s (images decoded lazily, in the loader workers)."""

    def __init__(self, task: Any, role: str, ds, sft_target_mode: str = "auto"):
        self.task = task
        self.role = role
        self.ds = ds
        self.sft_target_mode = sft_target_mode

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Example:
        row = self.ds[index]
        if self.role == "train":
            return Example(
                image=load_image(row["image"]),
                question=str(row["problem"]),
                answer=answer_from_solution(str(row["solution"])),
                target=sft_target(row, self.sft_target_mode),
                index=index,
            )
        answer = str(row["ground_truth"]).strip()
        return Example(
            image=load_image(row["image"] if row.get("image") is not None else row["image_path"]),
            question=str(row["question"]),
            answer=answer,
            target=f"<answer> {answer} </answer>",
            index=index,
        )
