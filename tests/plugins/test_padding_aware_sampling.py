"""The padding-aware bucketing sampler on a pinned length distribution, and on a real llm run."""

from __future__ import annotations

import numpy as np
import pytest

from jevons.framework.errors import UsageError
from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig
from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler


def _speech_like(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Utterance seconds log-normal (median 8 s, sigma 0.75, clipped to [1, 40]); output tokens 3.2/s x U(0.7, 1.3)."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(8.0), 0.75, n), 1.0, 40.0)
    tokens = np.round(seconds * 3.2 * rng.uniform(0.7, 1.3, n))
    return np.stack([seconds, tokens], axis=1)


def _epoch(sampler: BucketingBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("dims", [1, 2])
def test_every_sample_exactly_once_per_epoch(world_size: int, dims: int) -> None:
    lengths = _speech_like()
    cfg = PaddingAwareSamplingConfig(max_tokens=600, dims=dims, num_buckets=30, output_buckets=3)
    ranks = [BucketingBatchSampler(lengths, cfg, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
    epochs = [_epoch(s, 0) for s in ranks]
    assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) == len(ranks[0])  # every rank, same number of steps
    seen = [i for batches in epochs for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(lengths)))


def test_no_batch_over_budget_counting_padding_and_the_quadratic_term() -> None:
    lengths = _speech_like()
    cfg = PaddingAwareSamplingConfig(max_tokens=600, dims=2, quadratic=0.3, max_output_tokens=1500, max_batch_size=40)
    for batch in _epoch(BucketingBatchSampler(lengths, cfg), 0):
        longest, longest_out, n = lengths[batch, 0].max(), lengths[batch, 1].max(), len(batch)
        assert n * longest + 0.3 * n * longest**2 <= 600 + 1e-9
        assert n * longest_out <= 1500 and n <= 40


def test_deterministic_and_reshuffled_each_epoch() -> None:
    lengths = _speech_like()
    cfg = PaddingAwareSamplingConfig(max_tokens=600)
    first = _epoch(BucketingBatchSampler(lengths, cfg, seed=3), 0)
    assert first == _epoch(BucketingBatchSampler(lengths, cfg, seed=3), 0)
    assert first != _epoch(BucketingBatchSampler(lengths, cfg, seed=3), 1)
    assert first != _epoch(BucketingBatchSampler(lengths, cfg, seed=4), 0)


def test_exact_mid_epoch_resume() -> None:
    lengths = _speech_like()
    cfg = PaddingAwareSamplingConfig(max_tokens=600, dims=2)
    full = _epoch(BucketingBatchSampler(lengths, cfg, seed=5, rank=1, world_size=2), 3)
    resumed = BucketingBatchSampler(lengths, cfg, seed=5, rank=1, world_size=2)
    resumed.resume(epoch=3, position=17)
    resumed.set_epoch(3)
    assert list(resumed) == full[17:]
    assert list(resumed) == full  # the next iteration is the whole epoch again


def test_ranks_draw_from_one_bucket_each_step() -> None:
    lengths = _speech_like()
    cfg = PaddingAwareSamplingConfig(max_tokens=600, dims=2, output_buckets=3)
    ranks = [BucketingBatchSampler(lengths, cfg, seed=2, rank=r, world_size=2) for r in range(2)]
    buckets = ranks[0].buckets
    for a, b in zip(*(_epoch(s, 0) for s in ranks)):
        # The bucket a round was cut from: its own samples, plus leftovers carried from shorter buckets.
        assert buckets[a].max() == buckets[b].max()


def _padding(lengths: np.ndarray, batches: list[list[int]], column: int) -> float:
    real = sum(lengths[b, column].sum() for b in batches)
    padded = sum(len(b) * lengths[b, column].max() for b in batches)
    return 1.0 - real / padded


def test_two_d_buckets_bound_both_lengths() -> None:
    lengths = _speech_like(8000)
    one = _epoch(BucketingBatchSampler(lengths, PaddingAwareSamplingConfig(max_tokens=600, dims=1)), 0)
    two = _epoch(
        BucketingBatchSampler(lengths, PaddingAwareSamplingConfig(max_tokens=600, dims=2, output_buckets=4)), 0
    )
    random = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [random[i : i + 60].tolist() for i in range(0, len(random), 60)]
    assert _padding(lengths, two, 0) < 0.04 and _padding(lengths, one, 0) < 0.02
    assert _padding(lengths, two, 1) < _padding(lengths, one, 1)  # the output side pads less with 2-D buckets
    assert _padding(lengths, random_batches, 0) > 0.5  # what random batching costs on this distribution


def test_bad_lengths_are_refused() -> None:
    with pytest.raises(UsageError, match="dims=2 needs two lengths per sample"):
        BucketingBatchSampler(np.ones((10, 1)), PaddingAwareSamplingConfig(dims=2))
    with pytest.raises(UsageError, match="a sample of length 50 costs more than padding_aware_sampling.max_tokens=40"):
        BucketingBatchSampler(np.array([[10.0], [50.0]]), PaddingAwareSamplingConfig(max_tokens=40))


def test_the_plugin_trains_the_llm_family(train, tiny) -> None:
    result = train(
        tiny(
            "plugins=[padding_aware_sampling]",
            "padding_aware_sampling.max_tokens=264",
            "padding_aware_sampling.num_buckets=4",
            "trainer.max_steps=3",
        )
    )
    assert result.summary["steps"] == 3 and result.summary["train_loss"] is not None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_few_samples_per_rank_in_the_last_sub_bucket_still_feed_every_rank() -> None:
    # Found by the property test: 8 samples, 4 ranks, 2-D, one bucket split into two sub-buckets.
    rng = np.random.default_rng(0)
    lengths = np.stack([rng.integers(1, 50, 8), rng.integers(1, 30, 8)], axis=1).astype(float)
    cfg = PaddingAwareSamplingConfig(max_tokens=120, dims=2, num_buckets=1, output_buckets=2)
    epochs = [_epoch(BucketingBatchSampler(lengths, cfg, seed=0, rank=r, world_size=4), 0) for r in range(4)]
    assert len({len(e) for e in epochs}) == 1
    assert sorted(i for e in epochs for batch in e for i in batch) == list(range(8))


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=8, max_value=400),
    world_size=st.integers(min_value=1, max_value=4),
    dims=st.sampled_from([1, 2]),
    buckets=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_property_every_sample_once_and_within_budget(count, world_size, dims, buckets, seed) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.stack([rng.integers(1, 50, count), rng.integers(1, 30, count)], axis=1).astype(float)
    cfg = PaddingAwareSamplingConfig(max_tokens=120, dims=dims, num_buckets=buckets, output_buckets=2)
    ranks = [BucketingBatchSampler(lengths, cfg, seed=seed, rank=r, world_size=world_size) for r in range(world_size)]
    epochs = [_epoch(s, 0) for s in ranks]
    assert len({len(e) for e in epochs}) == 1
    seen = sorted(i for e in epochs for batch in e for i in batch)
    assert seen == list(range(count))
    for batch in (b for e in epochs for b in e):
        assert len(batch) * lengths[batch, 0].max() <= 120
