"""The one LightningDataModule: the train split of `task` and a named evaluation split per eval task."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from .collate import PromptCollator
from .records import BadRows, DataError
from .sampling import ResumableLoader, ShardSampler
from .tasks import TaskSplit, load_split

log = logging.getLogger(__name__)


class VLMDataModule(pl.LightningDataModule):
    """Serves `task`'s train split and, for every name in `eval_tasks`, that task's `eval_split` (test, or
    validation when tuning).

    Splits are loaded and validated in `setup`, which the runner calls before it builds a model, so
    bad data fails in seconds. Validation loaders come in `eval_tasks` order; `eval_names[i]` names
    loader i (metrics are logged as eval/<name>/...).
    """

    # The settings come from the run's config (method.batch_size, eval.batch_size, data.*, eval.split, seed):
    # no defaults here, so each is stated once, in its schema or YAML.
    def __init__(self, task: Any, eval_tasks: dict[str, Any], *, cache_dir: str, train_batch_size: int,
                 eval_batch_size: int, train_collator: Callable[..., Any] | None, sft_target: str, with_train: bool,
                 seed: int, on_bad_row: str, max_bad_fraction: float, eval_split: str, num_workers: int = 0):
        super().__init__()
        # The method's collator class (its descriptor's train_collator): called as
        # train_collator(processor, template, split=...) once the processor exists.
        self.train_collator = train_collator
        self.seed = seed
        # Micro-batches of the whole run (set from the budget before training starts).
        self.train_num_batches: int | None = None
        self.task = task
        self.eval_tasks = eval_tasks
        self.eval_split = eval_split
        self.cache_dir = cache_dir
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.sft_target = sft_target
        self.num_workers = num_workers
        self.with_train = with_train
        self.processor = None  # set by the runner once the model's processor exists
        self.train_split: TaskSplit | None = None
        self.eval_splits: dict[str, TaskSplit] = {}
        # Rows left out of every split under data.on_bad_row=skip (the runner lists them).
        self.bad_rows = BadRows(on_bad_row, max_bad_fraction)

    @property
    def eval_names(self) -> list[str]:
        return list(self.eval_tasks)

    def setup(self, stage: str | None = None) -> None:
        if self.with_train and self.train_split is None:
            ds = load_split(self.task, "train", self.cache_dir, self.bad_rows)
            self.train_split = TaskSplit(self.task, "train", ds, self.sft_target)
            log.info("train split of %s: %d examples", self.task.name, len(ds))
        for name, task in self.eval_tasks.items():
            if name not in self.eval_splits:
                ds = load_split(task, self.eval_split, self.cache_dir, self.bad_rows)
                self.eval_splits[name] = TaskSplit(task, self.eval_split, ds)
                log.info("eval split %s (%s): %d examples", name, self.eval_split, len(ds))

    def _require_processor(self) -> Any:
        if self.processor is None:
            raise RuntimeError("VLMDataModule.processor must be set before building dataloaders")
        return self.processor

    def train_dataloader(self) -> ResumableLoader:
        """The run's micro-batches in a fixed, seeded order, resumable mid-epoch."""
        if self.train_split is None:
            raise DataError("no train split: this data module was built for evaluation only")
        if self.train_num_batches is None:
            raise RuntimeError("VLMDataModule.train_num_batches must be set from the run's budget")
        if self.train_collator is None:
            raise RuntimeError("VLMDataModule.train_collator must be given to build the training loader")
        collate = self.train_collator(self._require_processor(), self.task.prompt, split=f"{self.task.name} train")
        return ResumableLoader(self.train_split, batch_size=self.train_batch_size, num_batches=self.train_num_batches,
                               seed=self.seed, collate_fn=collate, num_workers=self.num_workers)

    def eval_dataloader(self, name: str, items: list[int] | None = None, batch_size: int | None = None) -> DataLoader:
        """Eval task `name`'s split as prompts, all of it or the given `items` (indices into the split), in
        batches of eval.batch_size unless `batch_size` says otherwise."""
        task = self.eval_tasks[name]
        collate = PromptCollator(self._require_processor(), task.eval_prompt or task.prompt, split=f"{name} {self.eval_split}")
        split = self.eval_splits[name] if items is None else Subset(self.eval_splits[name], list(items))
        # Each rank scores its own shard (no padding repeats); the harness gathers them. The loader's own
        # generator: a DataLoader without one draws its workers' base seed from the global torch RNG each
        # time it is iterated, so an evaluation (row zero, in-training validation) would shift every
        # sample GRPO draws afterwards and a run would train differently with eval.row_zero on or off.
        return DataLoader(split, batch_size=batch_size or self.eval_batch_size, sampler=ShardSampler(len(split)),
                          collate_fn=collate, num_workers=self.num_workers, generator=torch.Generator())

    def val_dataloader(self) -> list[DataLoader]:
        return [self.eval_dataloader(name) for name in self.eval_names]
