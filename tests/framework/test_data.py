"""Indexed shards round trip through the reader; the random batch sampler's contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jevons.framework.data.cache import ensure_built
from jevons.framework.data.reader import ShardDataset
from jevons.framework.data.sampler import RandomBatchSampler
from jevons.framework.data.shards import decode_npy, read_index, write_shards
from jevons.framework.errors import UsageError
from jevons.framework.family import DataSource


def _samples(n: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        length = int(rng.integers(1, 50))
        yield (
            {"__key__": f"s{i:04d}", "tokens.npy": np.arange(length, dtype=np.uint16), "txt": f"sample {i}"},
            [length, i % 7],
        )


def test_shards_round_trip_counts_keys_fields_and_lengths(tmp_path: Path) -> None:
    path = write_shards(_samples(25), tmp_path, "train", length_names=["tokens", "other"], max_samples_per_shard=10)
    index = read_index(path)
    assert [s["nsamples"] for s in index.shards] == [10, 10, 5]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    assert index.lengths.shape == (25, 2) and index.length_names == ["tokens", "other"]
    dataset = ShardDataset(index, decode=lambda s: s)
    assert len(dataset) == 25
    for i in (0, 9, 10, 24):  # across shard boundaries
        sample = dataset[i]
        assert sample["__key__"] == f"s{i:04d}" and sample["__url__"].endswith(f"train-00000{i // 10}.tar")
        assert sample["txt"] == f"sample {i}".encode()
        tokens = decode_npy(sample["tokens.npy"])
        assert len(tokens) == index.lengths[i, 0] and tokens.dtype == np.uint16
        assert index.lengths[i, 1] == i % 7


def test_index_problems_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No shard index at"):
        read_index(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"wids_version": 1, "shardlist": []}))
    with pytest.raises(UsageError, match="not a Jevons shard index"):
        read_index(tmp_path / "bad.json")
    path = write_shards(_samples(3), tmp_path, "val", length_names=["tokens", "other"])
    data = json.loads(path.read_text())
    data["jevons"]["lengths"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="lists 3 samples but 2 lengths"):
        read_index(path)


@pytest.mark.parametrize("source", ["", "  ", "no-such-source"])
def test_a_source_that_names_nothing_is_refused_with_the_choices(source: str, tmp_path: Path) -> None:
    from jevons.framework.data.cache import resolve_source

    with pytest.raises(UsageError, match="neither a built-in data source nor a folder"):
        resolve_source(source, tmp_path, {})


def _epoch(sampler: RandomBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_covers_each_sample_once_per_epoch_across_ranks() -> None:
    ranks = [RandomBatchSampler(103, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    batches = [_epoch(s, 0) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 103 // 8
    seen = [i for rank in batches for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 12 * 8  # 7 samples that cannot fill a global batch are dropped
    assert all(len(b) == 4 for rank in batches for b in rank)


def test_sampler_is_deterministic_and_reshuffles_each_epoch() -> None:
    first = _epoch(RandomBatchSampler(50, 5, seed=1), 0)
    assert first == _epoch(RandomBatchSampler(50, 5, seed=1), 0)
    assert first != _epoch(RandomBatchSampler(50, 5, seed=1), 1)
    assert first != _epoch(RandomBatchSampler(50, 5, seed=2), 0)
    in_order = RandomBatchSampler(12, 5, shuffle=False, drop_last=False)
    assert list(in_order) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


def test_sampler_resumes_mid_epoch_without_repeats_or_gaps() -> None:
    full = _epoch(RandomBatchSampler(60, 4, seed=3), 2)
    resumed = RandomBatchSampler(60, 4, seed=3)
    resumed.resume(epoch=2, position=5)
    resumed.set_epoch(2)  # what Lightning calls at the start of the resumed epoch
    assert list(resumed) == full[5:]
    assert len(resumed) == len(full)  # __len__ is the whole epoch, as Lightning counts it
    assert list(resumed) == full  # the resume applies to one iteration only
    with pytest.raises(ValueError, match="cannot fill one batch"):
        RandomBatchSampler(3, 4)


def test_each_training_epoch_draws_its_own_order() -> None:
    """Lightning sets the epoch of ``batch_sampler.sampler`` only; the run's state callback sets ours, so
    epochs differ (they all repeated epoch 0's order before) and a resume past epoch 0 reads what an
    uninterrupted run reads."""
    from types import SimpleNamespace

    from jevons.framework.callbacks import ResumableState

    sampler = RandomBatchSampler(12, 4, seed=5)
    state = ResumableState(sampler)
    epochs = []
    for epoch in range(3):
        state.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)  # type: ignore[arg-type]
        epochs.append(list(sampler))
    assert epochs == [_epoch(RandomBatchSampler(12, 4, seed=5), e) for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    state.position = len(sampler)  # a checkpoint after epoch 2's last batch: Lightning resumes into epoch 3
    resumed = ResumableState(RandomBatchSampler(12, 4, seed=5))
    resumed.load_state_dict(state.state_dict())
    assert list(resumed.batch_sampler) == _epoch(RandomBatchSampler(12, 4, seed=5), 3)


def test_built_in_data_is_built_once_and_atomically(tmp_path: Path) -> None:
    builds = []

    def build(directory: Path, progress: bool) -> None:
        builds.append(directory.name)
        (directory / "train.json").write_text("{}")

    source = DataSource("toy", "a toy", build)
    first = ensure_built(source, tmp_path, progress=False)
    assert ensure_built(source, tmp_path, progress=False) == first
    assert len(builds) == 1 and (first / "COMPLETE").exists() and builds[0].startswith(".toy-v1.tmp")

    def broken(directory: Path, progress: bool) -> None:
        (directory / "half.json").write_text("{")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        ensure_built(DataSource("flaky", "", broken), tmp_path, progress=False)
    assert not (tmp_path / "flaky-v1").exists() and not list(tmp_path.glob(".flaky*tmp*"))
