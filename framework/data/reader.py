"""Map-style reading of indexed webdataset shards, with a policy for data that cannot be read.

Every shard's tar headers are scanned once, when the dataset is built: that
gives each sample's byte ranges (samples are then read with ``os.pread``, in
any process, in any order) and finds the damage before training starts:

* a **truncated shard**: its complete samples are kept, the rest are lost;
* a **duplicate key** (a key seen again later in a shard, or one field twice):
  the repeat is dropped, so it can never overwrite the first;
* and at read time a **corrupt sample** (its bytes do not decode).

``data.corrupt=skip`` names and counts every loss and continues, aborting once
more than ``data.max_corrupt_fraction`` of a split is lost; ``strict`` stops at
the first, naming the shard and the key. Counts reach the run summary.

Why not ``wids``: on a truncated shard it fails to open the whole shard
("unpack requires a buffer of 500 bytes", measured here) and it lets a
duplicated field overwrite the first; reading by scanned offsets keeps every
readable sample and names every lost one.
"""

from __future__ import annotations

import os
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from jevons.framework.data.shards import ShardIndex
from jevons.framework.errors import DataError

Policy = Literal["skip", "strict"]


@dataclass(frozen=True)
class Loss:
    """One sample the run does not get, and why."""

    url: str
    key: str
    reason: str  # "truncated shard", "duplicate key", "corrupt sample"

    def __str__(self) -> str:
        return f"{self.url}: {self.key} ({self.reason})"


@dataclass(frozen=True)
class Corrupt:
    """What ``ShardDataset[i]`` returns, under ``skip``, for a sample that does not decode."""

    loss: Loss


@dataclass
class _Sample:
    key: str
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)  # extension -> (offset, size)


_SCANS: dict[tuple[str, int, int, int, int], tuple[list[_Sample | None], list[Loss]]] = {}
"""Scans done in this process, by (path, inode, size, modification time, expected count): a family opens
a split more than once in a build (mixed_modal reads the longest sequence before the datasets are
made), and a scan of a 5,000-sample shard costs a quarter of a second in ``tarfile``."""


def scan_shard(url: str, expected: int) -> tuple[list[_Sample | None], list[Loss]]:
    """Samples in tar order (None for a dropped duplicate) and what was lost, from the headers alone.
    A shard scanned before in this process, unchanged since, is not read again."""
    stat = os.stat(url)
    key = (os.path.realpath(url), stat.st_ino, stat.st_size, stat.st_mtime_ns, expected)
    if key not in _SCANS:
        _SCANS[key] = _scan(url, stat.st_size, expected)
    samples, losses = _SCANS[key]
    return list(samples), list(losses)


def _scan(url: str, size: int, expected: int) -> tuple[list[_Sample | None], list[Loss]]:
    samples: list[_Sample | None] = []
    losses: list[Loss] = []
    seen: set[str] = set()
    current: _Sample | None = None
    truncated = False
    try:
        with tarfile.open(url, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    truncated = True  # the member's bytes run past the end of the file
                    break
                key, extension = _split_name(member.name)
                place = (member.offset_data, member.size)
                if current is not None and key == current.key and extension not in current.fields:
                    current.fields[extension] = place
                    continue
                if key in seen:  # the same key again, next to its first use or later
                    losses.append(Loss(url, key, "duplicate key"))
                    samples.append(None)
                    current = _Sample(key, {extension: place})  # absorbs the repeat's other fields
                    continue
                seen.add(key)
                current = _Sample(key, {extension: place})
                samples.append(current)
    except (tarfile.TarError, EOFError):  # a damaged header: nothing after it can be read
        truncated = True
    if truncated and samples and samples[-1] is not None:
        complete = next(s for s in samples if s is not None)
        if len(samples) > 1 and samples[-1].fields.keys() != complete.fields.keys():
            samples.pop()  # the cut went through the last sample: keep none of its fields
    missing = expected - len(samples)
    if missing > 0:
        losses += [Loss(url, f"sample {len(samples) + i} of {expected}", "truncated shard") for i in range(missing)]
    return samples[:expected], losses


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension


class ShardDataset:
    """Map-style access to one split's samples; ``decode`` runs in DataLoader workers.

    ``lengths`` and ``len()`` cover the readable samples only, so batch
    samplers never draw a sample the scan found lost.
    """

    def __init__(
        self,
        index: ShardIndex,
        decode: Callable[[dict[str, Any]], Any],
        policy: Policy = "skip",
        max_lost_fraction: float = 0.01,
    ) -> None:
        self.index = index
        self.decode = decode
        self.policy = policy
        self.max_lost_fraction = max_lost_fraction
        self.lost: list[Loss] = []
        self._entries: list[tuple[int, _Sample]] = []
        kept_positions: list[int] = []
        position = 0
        for shard_number, shard in enumerate(index.shards):
            samples, losses = scan_shard(shard["url"], shard["nsamples"])
            if losses and policy == "strict":
                raise DataError(f"data.corrupt=strict: {losses[0]}. Set data.corrupt=skip to continue without it.")
            self.lost += losses
            for offset, sample in enumerate(samples):
                if sample is not None:
                    self._entries.append((shard_number, sample))
                    kept_positions.append(position + offset)
            position += shard["nsamples"]
        self.lengths = index.lengths[np.asarray(kept_positions, dtype=np.int64)]
        self.check_losses(0)
        self._files: dict[int, int] = {}
        self._pid = -1

    @property
    def total(self) -> int:
        return self.index.num_samples

    def __len__(self) -> int:
        return len(self._entries)

    def check_losses(self, lost_while_reading: int) -> None:
        """Abort (``skip``) once more than ``max_lost_fraction`` of the split is lost."""
        lost = len(self.lost) + lost_while_reading
        if lost > self.max_lost_fraction * self.total:
            examples = "; ".join(str(loss) for loss in self.lost[:3])
            raise DataError(
                f"{lost} of {self.total} samples in {self.index.path} are unreadable, more than "
                f"data.max_corrupt_fraction={self.max_lost_fraction}. First: {examples or 'see the run log'}."
            )

    def raw(self, i: int) -> dict[str, Any]:
        """The undecoded sample: field name to bytes, plus ``__key__`` and ``__url__``."""
        shard_number, sample = self._entries[int(i)]
        fd = self._descriptor(shard_number)
        data: dict[str, Any] = {ext: os.pread(fd, size, offset) for ext, (offset, size) in sample.fields.items()}
        data["__key__"] = sample.key
        data["__url__"] = self.index.shards[shard_number]["url"]
        return data

    def __getitem__(self, i: int) -> Any:
        sample = self.raw(i)
        try:
            return self.decode(sample)
        except Exception as error:
            loss = Loss(sample["__url__"], sample["__key__"], f"corrupt sample: {type(error).__name__}: {error}")
            if self.policy == "strict":
                raise DataError(f"data.corrupt=strict: {loss}. Set data.corrupt=skip to continue without it.") from None
            return Corrupt(loss)

    def _descriptor(self, shard_number: int) -> int:
        if self._pid != os.getpid():  # a new worker process: descriptors are not shared across forks
            self._files, self._pid = {}, os.getpid()
        if shard_number not in self._files:
            self._files[shard_number] = os.open(self.index.shards[shard_number]["url"], os.O_RDONLY)
        return self._files[shard_number]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, -1
        return state


class ShardBackedDataset(ABC):
    """A family's map-style dataset over one split's :class:`ShardDataset` (``samples``).

    It satisfies :class:`~jevons.framework.protocols.MapDataset` with what every family's
    dataset shares: ``lengths``, ``len()``, the losses of the scan (``lost``) and the policy
    check (``check_losses``) come from ``samples``. A subclass implements ``__getitem__``
    (turning ``samples[i]`` into a training sample; a :class:`Corrupt` passes through) and
    ``collate``. One whose items are not the samples (windows over documents) sets its own
    ``lengths`` and overrides ``__len__``.
    """

    def __init__(self, samples: ShardDataset) -> None:
        self.samples = samples
        self.lengths: np.ndarray = samples.lengths

    @property
    def lost(self) -> list[Loss]:
        """Samples lost when the shards were scanned (truncated shards, duplicate keys)."""
        return self.samples.lost

    def check_losses(self, lost_while_reading: int) -> None:
        """Abort once too much of the split is lost (:meth:`ShardDataset.check_losses`)."""
        self.samples.check_losses(lost_while_reading)

    def __len__(self) -> int:
        return len(self.samples)

    @abstractmethod
    def __getitem__(self, i: int) -> Any:
        """Sample ``i`` ready for ``collate``, or the :class:`Corrupt` that ``samples`` returned."""

    @abstractmethod
    def collate(self, samples: list[Any]) -> Any:
        """A batch of samples (a static method in the families)."""


def open_split(folder: Any, split: str, decode: Callable[[dict[str, Any]], Any], data_config: Any) -> ShardDataset:
    """A split's ShardDataset (``<folder>/<split>.json``) with the config's corruption policy."""
    from pathlib import Path

    from jevons.framework.data.shards import read_index

    index = read_index(Path(folder) / f"{split}.json")
    return ShardDataset(index, decode, data_config.corrupt, data_config.max_corrupt_fraction)
