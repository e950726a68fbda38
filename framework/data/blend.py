"""Several data folders as one dataset, in given proportions: ``data.source=[DIR_A:0.7,DIR_B:0.3]``.

A source is a folder (or a built-in source's name), optionally followed by ``:WEIGHT``; sources
without a weight count by their size. As in Megatron's ``BlendedDataset``, the blend has as many
samples as its sources together, and source ``j`` fills ``round(w_j * N)`` of them (largest
remainders, so the counts add up): a source given more than its size repeats, each pass in a new
order; one given less contributes a random subset. The choice is seeded, so every rank and every
resumed run sees the same blend, and it is map-style with every sample's lengths, so every batch
sampler (and its checkpointed position) works on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.errors import UsageError


def parse_sources(source: str | Sequence[str]) -> list[tuple[str, float | None]]:
    """``data.source`` as ``(folder or name, weight or None)`` pairs; a path's own colons are kept."""
    items = [source] if isinstance(source, str) else list(source)
    if not items:
        raise UsageError("data.source=[] names no data: give a data source, a folder, or [DIR_A:0.7,DIR_B:0.3].")
    parsed: list[tuple[str, float | None]] = []
    for item in items:
        folder, sep, weight = str(item).rpartition(":")
        try:
            value = float(weight) if sep else None
        except ValueError:
            value = None
        if value is None:
            parsed.append((str(item), None))
            continue
        if not value > 0:
            raise UsageError(f"data.source item {item!r}: the weight after ':' must be a positive number.")
        parsed.append((folder, value))
    if len(parsed) == 1:
        return [(parsed[0][0], None)]
    return parsed


def same_file(first: Path, second: Path) -> bool:
    """Whether two folders' side files (a tokenizer, a vocabulary) are the same bytes; a missing one is a usage error."""
    for path in (first, second):
        if not path.is_file():
            raise UsageError(
                f"data.source: {path.parent} has no {path.name}; it is not a folder of that family's data."
            )
    return first.read_bytes() == second.read_bytes()


def blend_counts(sizes: Sequence[int], weights: Sequence[float | None]) -> list[int]:
    """Samples each source fills in a blend of ``sum(sizes)`` (largest-remainder rounding of the weights)."""
    total = sum(sizes)
    if len({weight is None for weight in weights}) > 1:
        raise UsageError("data.source: give every source a weight (DIR:0.7) or none (blended by size), not some.")
    shares = np.asarray([w if w is not None else float(s) for w, s in zip(weights, sizes)], dtype=np.float64)
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[index] += 1
    return [int(c) for c in counts]


class BlendedDataset:
    """Map-style samples drawn from ``datasets`` in the proportions of ``weights`` (see the module docstring).

    :param datasets: the sources' datasets, all of one family (``collate`` is the first's).
    :param weights: one per source; None blends by size.
    :param names: the sources, for messages and :attr:`counts`.
    """

    def __init__(
        self, datasets: Sequence[Any], weights: Sequence[float | None], names: Sequence[str], seed: int
    ) -> None:
        sizes = [len(dataset) for dataset in datasets]
        empty = [name for name, size in zip(names, sizes) if size == 0]
        if empty:
            raise UsageError(f"data.source: {', '.join(empty)} has no readable samples in this split.")
        self.datasets = list(datasets)
        self.counts = blend_counts(sizes, weights)
        """Samples each source fills, in the order of ``datasets`` (a source may be listed twice)."""
        self.names = list(names)
        rng = np.random.default_rng(seed)
        sources, positions = [], []
        for number, (size, count) in enumerate(zip(sizes, self.counts)):
            passes = -(-count // size)  # ceil: a source weighted above its size repeats, in a new order each time
            order = np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]
            sources.append(np.full(count, number, dtype=np.int64))
            positions.append(order)
        self.source = np.concatenate(sources)
        self.position = np.concatenate(positions)
        self.lengths = np.concatenate(
            [np.asarray(d.lengths).reshape(len(d), -1)[p] for d, p in zip(self.datasets, positions)]
        )
        if all(np.asarray(d.lengths).ndim == 1 for d in self.datasets):
            self.lengths = self.lengths[:, 0]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        return self.datasets[int(self.source[index])][int(self.position[index])]

    def collate(self, samples: list[Any]) -> Any:
        return self.datasets[0].collate(samples)

    @property
    def lost(self) -> list[Any]:
        """Every source's samples lost when its shards were scanned."""
        return [loss for dataset in self.datasets for loss in getattr(dataset, "lost", [])]

    def check_losses(self, lost_while_reading: int) -> None:
        """Abort once more than ``data.max_corrupt_fraction`` of all the sources' samples is lost."""
        from jevons.framework.errors import DataError

        shards = [getattr(dataset, "samples", None) for dataset in self.datasets]
        total = sum(getattr(s, "total", len(d)) for s, d in zip(shards, self.datasets))
        allowed = min(getattr(s, "max_lost_fraction", 1.0) for s in shards)
        lost = len(self.lost) + lost_while_reading
        if lost > allowed * total:
            raise DataError(
                f"{lost} of {total} samples of the blended sources are unreadable, more than "
                f"data.max_corrupt_fraction={allowed}."
            )
