"""The default batch sampler: shuffled fixed-size batches, split across data-parallel ranks.

Batch samplers own the data-parallel split and their position (docs/architecture.md,
"Data"); Lightning's distributed sampler is off. Every rank computes the same
global order from ``(seed, epoch)``, cuts it into global batches of
``batch_size * world_size`` samples, and takes its own stride of each, so all
ranks step through the same number of batches. ``resume(epoch, position)``
makes the next ``__iter__`` start after the batches already consumed; the
framework's data-position callback tracks what was consumed (not what the
DataLoader prefetched) and stores it in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class RandomBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < batch_size * world_size and drop_last:
            raise ValueError(
                f"{num_samples} samples cannot fill one batch of {batch_size} x {world_size} ranks; "
                f"lower data.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._start = 0

    def __len__(self) -> int:
        """Batches per epoch on each rank (the full epoch, also right after a resume)."""
        per_global = self.num_samples / (self.batch_size * self.world_size)
        return int(per_global) if self.drop_last else math.ceil(per_global)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def resume(self, epoch: int, position: int) -> None:
        """Start the next iteration of ``epoch`` after its first ``position`` batches."""
        self.epoch = epoch
        self._start = position

    def order(self, epoch: int) -> torch.Tensor:
        """The global sample order of ``epoch``, identical on every rank."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        global_batch = self.batch_size * self.world_size
        start, self._start = self._start, 0
        for batch in range(start, len(self)):
            chunk = order[batch * global_batch : (batch + 1) * global_batch]
            mine = chunk[self.rank :: self.world_size]
            if len(mine):
                yield mine.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
