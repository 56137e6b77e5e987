"""A training loader that can stop and resume anywhere.

The whole run is one long stream of micro-batches: epoch e is a permutation of the dataset seeded by
(seed, e), epochs follow each other, and micro-batch j of the run is always the same prompts. The
loader is "stateful" for Lightning: its state is how many micro-batches training has consumed, so a
run resumed from a mid-epoch checkpoint continues with exactly the prompts it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class StreamPosition:
    """Micro-batches consumed by training (on this rank). The LightningModule advances it."""

    consumed: int = 0


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RunSampler(Sampler[int]):
    """Indices of micro-batches `position.consumed` .. `num_batches - 1` of the run, for this rank.
    Global micro-batch j holds batch_size x world_size indices; rank r takes its r-th slice."""

    def __init__(self, dataset_len: int, batch_size: int, num_batches: int, seed: int, position: StreamPosition,
                 shuffle: bool = True):
        self.dataset_len, self.batch_size, self.num_batches = dataset_len, batch_size, num_batches
        self.seed, self.position, self.shuffle = seed, position, shuffle

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.dataset_len))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_len, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        per_global_batch = self.batch_size * world
        start = self.position.consumed * per_global_batch
        end = self.num_batches * per_global_batch
        epoch, order = start // self.dataset_len, None
        for flat in range(start, end):
            e, offset = divmod(flat, self.dataset_len)
            if order is None or e != epoch:
                epoch, order = e, self._epoch_order(e)
            if (flat % per_global_batch) // self.batch_size == rank:
                yield order[offset]

    def __len__(self) -> int:
        return self.num_batches * self.batch_size


class ResumableLoader(DataLoader):
    """A DataLoader over the run's micro-batches, with Lightning's `state_dict` / `load_state_dict`."""

    def __init__(self, dataset: Dataset, batch_size: int, num_batches: int, seed: int,
                 collate_fn: Callable[[list[Any]], Any], shuffle: bool = True, num_workers: int = 0):
        self.position = StreamPosition()
        sampler = RunSampler(len(dataset), batch_size, num_batches, seed, self.position, shuffle)
        # Its own generator: creating an iterator draws a worker seed, which must not move the global
        # RNG (a resumed run creates its iterator after the RNG state was restored).
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                         num_workers=num_workers, drop_last=False, generator=torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.position.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.consumed = int(state["consumed"])


class ShardSampler(Sampler[int]):
    """Evaluation items for this rank: r, r + world, r + 2 world, ... Unlike DistributedSampler it
    never pads the shards with repeats, so across ranks every test item is scored exactly once."""

    def __init__(self, dataset_len: int):
        self.dataset_len = dataset_len

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        return iter(range(rank, self.dataset_len, world))

    def __len__(self) -> int:
        rank, world = _rank_and_world()
        return len(range(rank, self.dataset_len, world))
