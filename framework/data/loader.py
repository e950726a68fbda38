"""DataLoaders over a family's map-style dataset and a batch sampler; decoding runs in workers.

Each batch arrives as a :class:`LoadedBatch`: the family's collated batch, the
dataset indices it holds (what was consumed, for resume checks and data
accounting) and the samples that could not be decoded under
``data.corrupt=skip`` (:class:`~jevons.framework.data.reader.Corrupt`), which
are left out of the batch and counted by the framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from jevons.framework.data.reader import Corrupt, Loss
from jevons.framework.errors import DataError


@dataclass
class LoadedBatch:
    data: Any
    indices: list[int]
    lost: list[Loss] = field(default_factory=list)


class _Indexed(Dataset[tuple[int, Any]]):
    """``dataset[i]`` as ``(i, sample)``, so the collated batch knows which samples it holds."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return int(i), self.dataset[i]


class _Collate:
    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> LoadedBatch:
        good = [(i, s) for i, s in items if not isinstance(s, Corrupt)]
        lost = [s.loss for _, s in items if isinstance(s, Corrupt)]
        if not good:
            raise DataError(f"every sample of a batch was unreadable: {'; '.join(str(loss) for loss in lost)}")
        return LoadedBatch(self.collate([s for _, s in good]), [i for i, _ in good], lost)


def _init_worker(worker_id: int) -> None:
    # Workers decode; they must not compete with the training step for cores.
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the training process dies, even by SIGKILL."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def make_dataloader(dataset: Any, batch_sampler: Any, num_workers: int, seed: int = 0) -> DataLoader:
    """Workers are spawned, not forked: forking the training process, which runs gloo, OpenMP
    and progress-bar threads, can copy a held lock into a worker and hang it (seen here); and
    workers started by a forkserver outlived a SIGKILLed trainer, holding its pipes open (seen
    here). Spawned workers are the trainer's own children and die with it.

    The loader draws its workers' base seed from its own generator (``seed`` and the rank), not the
    global RNG: making an epoch's iterator would otherwise advance the training stream between a
    checkpoint after an epoch's last batch and the next batch, which a resumed run (its RNG restored
    at that batch) does not see."""
    collate = getattr(dataset, "collate", None)
    if collate is None:
        raise TypeError(f"{type(dataset).__name__} has no collate(samples) method; families' datasets must provide one")
    return DataLoader(
        _Indexed(dataset),
        batch_sampler=batch_sampler,
        collate_fn=_Collate(collate),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed * 1_000_003 + _rank()),
    )
