"""DataLoaders over a family's map-style dataset and a batch sampler; decoding runs in workers."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader


def _one_thread_per_worker(worker_id: int) -> None:
    # Workers decode; they must not compete with the training step for cores.
    torch.set_num_threads(1)


def make_dataloader(dataset: Any, batch_sampler: Any, num_workers: int) -> DataLoader:
    """Workers start from a forkserver: forking the training process itself, which runs gloo,
    OpenMP and progress-bar threads, can copy a held lock into the worker and hang it (seen here)."""
    collate = getattr(dataset, "collate", None)
    if collate is None:
        raise TypeError(f"{type(dataset).__name__} has no collate(samples) method; families' datasets must provide one")
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_one_thread_per_worker if num_workers > 0 else None,
        multiprocessing_context="forkserver" if num_workers > 0 else None,
    )
