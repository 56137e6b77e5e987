"""Build a task's train, validation or test split from its config, validated, as canonical examples."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch.utils.data import Dataset as TorchDataset

from .hub import load_test_jsonl, load_train_source
from .records import (
    IMAGE_FIELDS,
    SPLITS,
    BadRows,
    DataError,
    Example,
    check_answer,
    check_fields,
    check_image_value,
    check_text,
    image_field,
    load_images,
    record_answer,
    sft_target,
    text_fields,
)
from .synthetic import SOURCE_PREFIX, synthetic_sources, synthetic_split

log = logging.getLogger(__name__)

#: The source of R1-V's tasks (hub or local train data, R1-V's test jsonl); every other source is synthetic.
R1V_SOURCE = "r1v"


def task_sources() -> list[str]:
    """Every valid `task.source`: `synthetic_<module>` for each generator module in data/synthetic/, and `r1v`."""
    return [*synthetic_sources(), R1V_SOURCE]


def schema_role(split: str) -> str:
    """The record schema a split follows: validation items are scored like test items."""
    return "train" if split == "train" else "test"


def load_split(task: Any, split: str, cache_dir: str, bad_rows: BadRows | None = None):
    """The raw `datasets.Dataset` of `task`'s "train", "validation" or "test" split, validated and subset.

    Only synthetic tasks have a validation split (items kept apart from both train and test, in the
    test's schema, for tuning); asking another source for one is a DataError.

    Every row that can reach the model is checked (text fields, a decodable image, a ground truth the
    task's scorer can judge: its `check_ground_truth`, the same for train, eval and extra eval tasks): with
    `bad_rows` in "skip" mode a bad row is recorded and left out, otherwise the first one raises
    a DataError naming the file and row. A subset (`train_size`, `eval_size`) is the first that
    many good rows in its order, so skipped rows do not shrink it."""
    if task.source not in task_sources():
        raise DataError(f"task.source='{task.source}' for task '{task.name}': expected one of {task_sources()}")
    if split not in SPLITS:
        raise DataError(f"split '{split}' of task '{task.name}': expected one of {list(SPLITS)}")
    bad_rows = bad_rows or BadRows()
    role = schema_role(split)
    bad_rows.split = f"{task.name} {split}"
    check_ground_truth = ground_truth_check(task)
    size = task.train_size if role == "train" else task.eval_size
    if size is not None and size <= 0:
        key = "train_size" if role == "train" else "eval_size"
        raise DataError(f"task.{key}={size} for task '{task.name}': must be positive")
    # JSONL files are checked line by line as they are read (errors name the line); the other
    # sources row by row below, only as far as the subset needs.
    checked = False
    if task.source.startswith(SOURCE_PREFIX):
        syn = task.synthetic
        if syn is None:
            raise DataError(f"task '{task.name}': task.synthetic is required for source '{task.source}'")
        key = f"num_{split}"
        num = getattr(syn, key)
        if num < 1:
            raise DataError(f"task.synthetic.{key}={num}: the {split} split of task '{task.name}' is empty")
        ds = synthetic_split(task.source, split, num, syn.seed, syn.image_size, cache_dir)
        where = f"synthetic task '{task.name}' ({split} split)"
    elif split == "validation":
        raise DataError(f"task '{task.name}' (source '{task.source}') has no validation split: only synthetic tasks "
                        f"have one (eval.split=validation is for tuning on the embedded tasks)")
    elif role == "train":
        if not task.train_source:
            raise DataError(f"task '{task.name}': task.train_source is not set")
        ds = load_train_source(task.train_source, task.train_split, cache_dir=f"{cache_dir}/hub", bad_rows=bad_rows,
                               check_ground_truth=check_ground_truth)
        where = f"{task.train_source} ({task.train_split} split)"
        checked = task.train_source.endswith((".jsonl", ".json"))
    else:
        if not task.test_jsonl:
            raise DataError(f"task '{task.name}': task.test_jsonl is not set")
        ds = load_test_jsonl(task.test_jsonl, task.image_root, bad_rows=bad_rows, check_ground_truth=check_ground_truth)
        where, checked = task.test_jsonl, True
    if checked:
        bad_rows.check_fraction(where, len(ds))

    check_fields(ds.column_names, role, where)
    if len(ds) == 0:
        raise DataError(f"{where}: the {split} split of task '{task.name}' is empty")
    if role == "train" and size is not None and size < len(ds):
        # Seeded, so the same few-shot subset is drawn by every method and every rerun (the order
        # `datasets`' shuffle(seed) gives, so subsets match those drawn before rows were skippable).
        order = np.random.default_rng(task.train_subset_seed).permutation(len(ds)).tolist()
    else:
        order = list(range(len(ds)))
    check_row = (lambda i: None) if checked else _row_checker(ds, role, where, check_ground_truth)
    keep: list[int] = []
    for index in order:
        if size is not None and len(keep) == size:
            break
        if bad_rows.keep(lambda: check_row(index)):
            keep.append(index)
    if not checked:
        bad_rows.check_fraction(where, len(keep))
    return ds if keep == list(range(len(ds))) else ds.select(keep)


def ground_truth_check(task: Any):
    """The task's scorer's `check_ground_truth` (rewards/base.py). The protocol does not matter: whether
    a ground truth can be judged is the same under every protocol of a scorer."""
    from ..rewards.scorers import get_scorer

    try:
        return get_scorer(task.scorer).check_ground_truth
    except ValueError as exc:  # an unknown scorer; the config checks name it first in a run
        raise DataError(f"task '{task.name}': {exc}") from None


def _row_checker(ds, role: str, where: str, check_ground_truth: Any = None):
    """check(i) raises a RowError when row i of `ds` has an empty text field, an unusable image or a
    ground truth `check_ground_truth` refuses."""
    texts = {field: ds[field] for field in text_fields(role)}
    columns = [f for f in IMAGE_FIELDS[role] if f in ds.column_names]
    images = ds.select_columns(columns)
    for column in columns:
        undecoded = _undecoded(images.features[column])
        if undecoded is not None:  # checking reads the bytes; decoding is the check's own job
            images = images.cast_column(column, undecoded)

    def check(index: int) -> None:
        for field, values in texts.items():
            check_text(values[index], field, where, index)
        check_answer({field: values[index] for field, values in texts.items()}, role, check_ground_truth, where, index)
        row = images[index]
        field = image_field(row, IMAGE_FIELDS[role]) or columns[0]
        check_image_value(row[field], where, index, field)

    return check


def _undecoded(feature: Any) -> Any:
    """The feature of an image column (one image or a list of them) that does not decode, or None."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, (datasets.List, datasets.LargeList)) and isinstance(feature.feature, datasets.Image):
        return type(feature)(datasets.Image(decode=False))
    return None


class TaskSplit(TorchDataset):
    """A split as canonical `Example`s (images decoded lazily, in the loader workers), each carrying its
    row's other columns (`Example.fields`)."""

    def __init__(self, task: Any, split: str, ds, sft_target_mode: str = "auto"):
        self.task = task
        self.role = schema_role(split)
        self.ds = ds
        self.sft_target_mode = sft_target_mode

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Example:
        row = self.ds[index]
        images = load_images(row[image_field(row, IMAGE_FIELDS[self.role])])
        # Every other column, as the row holds it: GRPO's rewards read them by name.
        fields = {k: v for k, v in row.items() if k not in IMAGE_FIELDS[self.role]}
        if self.role == "train":
            return Example(
                images=images,
                question=str(row["problem"]),
                answer=record_answer(row, "train"),
                target=sft_target(row, self.sft_target_mode),
                index=index,
                fields=fields,
            )
        answer = record_answer(row, "test")
        return Example(
            images=images,
            question=str(row["question"]),
            answer=answer,
            target=f"<answer> {answer} </answer>",
            index=index,
            fields=fields,
        )
