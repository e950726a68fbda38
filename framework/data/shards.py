"""Indexed webdataset shards: written with ``webdataset.ShardWriter``, plus an index of every length.

A split is a set of tar shards plus an index JSON that is both a valid wids
dataset descriptor (``shardlist`` of ``{url, nsamples}``) and the carrier of
each sample's length(s), so batch samplers see every length up front without
opening a shard. Reading is :mod:`jevons.framework.data.reader`::

    {"wids_version": 1, "name": "llm-prose/train",
     "shardlist": [{"url": "train-000000.tar", "nsamples": 500, "filesize": 812032}],
     "jevons": {"lengths": [[310], [257], ...], "length_names": ["tokens"]}}

Each sample's fields are stored under webdataset's extension conventions
(``tokens.npy``, ``txt``, ``json``, ``png``...).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.errors import UsageError

INDEX_SUFFIX = ".json"


@dataclass(frozen=True)
class ShardIndex:
    """A split's index: where its shards are and every sample's length(s)."""

    path: Path
    shards: list[dict[str, Any]]
    lengths: np.ndarray  # (N, k) integer lengths, one row per sample
    length_names: list[str]

    @property
    def num_samples(self) -> int:
        return int(sum(shard["nsamples"] for shard in self.shards))


def write_shards(
    samples: Iterable[tuple[dict[str, Any], Sequence[int]]],
    directory: Path,
    split: str,
    *,
    length_names: Sequence[str],
    name: str = "",
    max_samples_per_shard: int = 1000,
) -> Path:
    """Write ``(sample, lengths)`` pairs as ``<split>-NNNNNN.tar`` shards and ``<split>.json``.

    ``sample`` maps ``__key__`` and extension-named fields to values, as
    ``webdataset.ShardWriter`` expects. Returns the index path.
    """
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    pattern = str(directory / f"{split}-%06d.tar")
    lengths: list[list[int]] = []
    counts: list[int] = []
    with wds.ShardWriter(pattern, maxcount=max_samples_per_shard, verbose=0) as writer:
        for sample, sample_lengths in samples:
            if len(sample_lengths) != len(length_names):
                raise ValueError(
                    f"sample {sample.get('__key__')} has {len(sample_lengths)} lengths, expected {length_names}"
                )
            writer.write(sample)
            while len(counts) < writer.shard:  # writer.shard counts the shards opened so far
                counts.append(0)
            counts[writer.shard - 1] += 1
            lengths.append([int(n) for n in sample_lengths])
    shards = []
    for number, count in enumerate(counts):
        filename = Path(pattern % number).name
        shards.append({"url": filename, "nsamples": count, "filesize": (directory / filename).stat().st_size})
    return write_index(directory, split, shards, lengths, length_names, name=name or split)


def write_index(
    directory: Path,
    split: str,
    shards: Sequence[dict[str, Any]],
    lengths: Sequence[Sequence[int]],
    length_names: Sequence[str],
    *,
    name: str,
) -> Path:
    """Write ``<split>.json`` for ``shards`` (``{url, nsamples, filesize}``, urls relative to ``directory``)
    under a temporary name and rename it, so a reader sees no index or a whole one."""
    import os

    index = {
        "wids_version": 1,
        "name": name,
        "shardlist": list(shards),
        "jevons": {"lengths": [list(row) for row in lengths], "length_names": list(length_names)},
    }
    path = directory / f"{split}{INDEX_SUFFIX}"
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(index))
    os.replace(temporary, path)
    return path


def read_index(path: Path) -> ShardIndex:
    """Read and check a split's index; shard URLs are resolved against its folder."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(
            f"No shard index at {path}: expected a file written by jevons.framework.data.write_shards."
        ) from None
    except json.JSONDecodeError as error:
        raise UsageError(f"Shard index {path} is not valid JSON: {error}") from None
    meta = data.get("jevons") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or "lengths" not in meta or "shardlist" not in data:
        raise UsageError(f"{path} is not a Jevons shard index: it needs 'shardlist' and 'jevons.lengths'.")
    shards = [dict(shard, url=str((Path(path).parent / shard["url"]).resolve())) for shard in data["shardlist"]]
    names = list(meta.get("length_names", []))
    lengths = np.asarray(meta["lengths"], dtype=np.int64).reshape(-1, max(1, len(names)))
    total = sum(shard["nsamples"] for shard in shards)
    if len(lengths) != total:
        raise UsageError(f"Shard index {path} lists {total} samples but {len(lengths)} lengths.")
    return ShardIndex(Path(path), shards, lengths, names)


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
