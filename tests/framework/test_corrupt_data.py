"""Corrupt data: every bad sample, truncated shard and duplicate key is named and counted, or stops the run."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from jevons.framework.data.loader import LoadedBatch, make_dataloader
from jevons.framework.data.reader import ShardDataset
from jevons.framework.data.sampler import RandomBatchSampler
from jevons.framework.data.shards import decode_npy, read_index, write_shards
from jevons.framework.errors import DataError

SHARDS, PER_SHARD = 20, 50
CORRUPTED = {(2, 5), (2, 6), (7, 0), (9, 49), (11, 17), (15, 30), (19, 2)}  # (shard, sample): 7 bad payloads
TRUNCATED_SHARD, KEPT_IN_TRUNCATED = 4, 31
DUPLICATE = (12, 40)  # this sample reuses the key of sample (12, 3)


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


def _key(shard: int, sample: int) -> str:
    if (shard, sample) == DUPLICATE:
        return "s12_003"
    return f"s{shard:02d}_{sample:03d}"


class _Samples:
    def __iter__(self):
        for shard in range(SHARDS):
            for sample in range(PER_SHARD):
                payload = _npy(np.full(4, shard * 1000 + sample, dtype=np.int32))
                if (shard, sample) in CORRUPTED:
                    payload = b"not a numpy file"
                yield {"__key__": _key(shard, sample), "value.npy": payload}, [4]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("damaged")
    index = write_shards(_Samples(), folder, "train", length_names=["n"], max_samples_per_shard=PER_SHARD)
    # Cut shard 4 in the middle of sample 31's data: samples 0..30 survive whole.
    shard = folder / f"train-{TRUNCATED_SHARD:06d}.tar"
    import tarfile

    with tarfile.open(shard) as tar:
        members = [m for m in tar if m.isfile()]
    cut = members[KEPT_IN_TRUNCATED].offset_data + 3
    with open(shard, "r+b") as handle:
        handle.truncate(cut)
    return index


def _decode(sample: dict) -> int:
    return int(decode_npy(sample["value.npy"])[0])


def test_skip_names_exactly_what_was_lost_and_serves_the_rest(damaged: Path) -> None:
    dataset = ShardDataset(read_index(damaged), _decode, policy="skip", max_lost_fraction=0.1)
    scanned = {(loss.url.rsplit("/", 1)[1], loss.reason) for loss in dataset.lost}
    truncated = [loss for loss in dataset.lost if loss.reason == "truncated shard"]
    assert len(truncated) == PER_SHARD - KEPT_IN_TRUNCATED
    assert all(loss.url.endswith(f"train-{TRUNCATED_SHARD:06d}.tar") for loss in truncated)
    assert ("train-000012.tar", "duplicate key") in scanned
    assert [loss.key for loss in dataset.lost if loss.reason == "duplicate key"] == ["s12_003"]
    total = SHARDS * PER_SHARD
    assert dataset.total == total and len(dataset) == total - len(truncated) - 1

    loader = make_dataloader(_Collated(dataset), RandomBatchSampler(len(dataset), 16, shuffle=True, drop_last=False), 0)
    consumed, corrupt = [], {}
    for batch in loader:
        assert isinstance(batch, LoadedBatch)
        consumed += batch.data
        corrupt.update({loss.key: loss for loss in batch.lost})
    assert sorted(corrupt) == sorted(_key(s, i) for s, i in CORRUPTED)
    assert all(loss.reason.startswith("corrupt sample: ValueError") for loss in corrupt.values())
    lost = len(dataset.lost) + len(corrupt)
    assert len(consumed) == total - lost  # consumed = total - lost
    assert len(set(consumed)) == len(consumed)
    expected = {s * 1000 + i for s in range(SHARDS) for i in range(PER_SHARD)}
    expected -= {s * 1000 + i for s, i in CORRUPTED} | {DUPLICATE[0] * 1000 + DUPLICATE[1]}
    expected -= {TRUNCATED_SHARD * 1000 + i for i in range(KEPT_IN_TRUNCATED, PER_SHARD)}
    assert set(consumed) == expected


class _Collated:
    """The ShardDataset with a collate, as a family's dataset would offer it."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    @staticmethod
    def collate(samples: list[int]) -> list[int]:
        return list(samples)


def test_strict_stops_at_the_first_problem_naming_shard_and_key(damaged: Path) -> None:
    with pytest.raises(DataError, match=r"data.corrupt=strict: .*train-000004.tar: .* \(truncated shard\)"):
        ShardDataset(read_index(damaged), _decode, policy="strict")
    healthy = damaged.parent / "healthy"
    index = write_shards(iter([({"__key__": "a", "value.npy": b"garbage"}, [1])]), healthy, "train", length_names=["n"])
    dataset = ShardDataset(read_index(index), _decode, policy="strict")
    with pytest.raises(DataError, match=r"data.corrupt=strict: .*train-000000.tar: a \(corrupt sample: ValueError"):
        dataset[0]


def test_skip_aborts_past_the_allowed_fraction(damaged: Path) -> None:
    with pytest.raises(DataError, match=r"20 of 1000 samples .* more than data.max_corrupt_fraction=0.01"):
        ShardDataset(read_index(damaged), _decode, policy="skip", max_lost_fraction=0.01)
    dataset = ShardDataset(read_index(damaged), _decode, policy="skip", max_lost_fraction=0.025)
    with pytest.raises(DataError, match="more than data.max_corrupt_fraction=0.025"):
        dataset.check_losses(7)  # the 7 corrupt payloads, found while reading, tip it over


def test_webdataset_writer_output_is_what_the_reader_expects(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "plain.tar")) as writer:
        writer.write({"__key__": "dir/x", "a.txt": "1", "b.json": {"k": 2}})
    index = {"wids_version": 1, "shardlist": [{"url": "plain.tar", "nsamples": 1}], "jevons": {"lengths": [[1]]}}
    (tmp_path / "train.json").write_text(__import__("json").dumps(index))
    sample = ShardDataset(read_index(tmp_path / "train.json"), lambda s: s)[0]
    assert sample["__key__"] == "dir/x" and sample["a.txt"] == b"1" and sample["b.json"] == b'{"k": 2}'
    assert os.path.exists(sample["__url__"])
