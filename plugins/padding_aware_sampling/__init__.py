"""``padding_aware_sampling``: length-bucketed batches filled to a budget that counts padding.

Seed: "Training and Inference Efficiency of Encoder-Decoder Speech Models"
(Canary-1B): random mini-batches spent more than half the compute on padding;
2-D bucketing by input and output length with per-bucket batch sizes made
batches 5x larger. Anchors: Lhotse's ``DynamicBucketingSampler`` (buckets of
equal total duration estimated from a sample of lengths, ``max_duration``,
a quadratic term for attention) and NeMo's 2-D bucketing.

How batches are made (:class:`~jevons.plugins.padding_aware_sampling.sampler.BucketingBatchSampler`;
the memory probe is :mod:`.probe`, the run's figures :mod:`.report`):

1. **Buckets** from every sample's lengths (all known up front): 1-D, by the
   first length, into ``num_buckets`` buckets of equal total cost; 2-D, by
   input length into ``num_buckets`` equal-cost buckets, then each by output
   length into ``output_buckets`` equal-count sub-buckets.
2. **Batches** per bucket and epoch: the bucket is shuffled (seed and epoch),
   cut into pools of ``pool_batches`` batches' worth, each pool sorted by
   input length and cut greedily so that ``n * max_len (+ quadratic * n * max_len^2)``
   stays within ``max_tokens`` (padding counted), at most ``max_batch_size``
   (or the bucket's measured cap) samples, and, in 2-D, ``n * max_out_len``
   within ``max_output_tokens``. Buckets are visited in length order and a
   bucket's last batch, if less than half full, is completed from the next.
3. **Rounds**: a bucket's batches are grouped ``world_size`` at a time (the
   largest split in two until they divide evenly), the rounds of all buckets
   are shuffled together, and at each step rank ``r`` takes batch ``r`` of the
   round: every sample once per epoch, every rank the same number of steps,
   all ranks in one bucket at a time (similar shapes, no rank waiting on a
   long batch).

The sampler owns the data-parallel split and its position: ``resume(epoch,
position)`` continues an epoch with neither repeats nor gaps. Works for any
family whose dataset exposes ``lengths`` (tokens, frames; input and output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from jevons.framework.protocols import BatchSampler, MapDataset


@dataclass
class PaddingAwareSamplingConfig:
    max_tokens: float = 4096
    """Budget per batch per rank, in the dataset's first length unit (tokens, frames), padding counted."""
    dims: Literal[1, 2] = 1
    """Bucket by the first length only, or by input and output length (needs two lengths per sample)."""
    num_buckets: int = 30
    """Buckets of equal total cost along the first length."""
    output_buckets: int = 6
    """With dims=2: sub-buckets along the second length within each bucket (more: less output
    padding, smaller sub-buckets, more partly filled batches)."""
    max_output_tokens: float | None = None
    """With dims=2: budget on the second length (padding counted); null: no limit."""
    quadratic: float = 0.0
    """Extra cost per sample of ``quadratic * max_len^2`` (attention), as Lhotse's quadratic_duration."""
    max_batch_size: int | None = None
    """A cap on samples per batch; per-bucket caps from the memory probe override it."""
    pool_batches: int = 16
    """Batches' worth of a bucket sorted together before cutting: larger pads less, shuffles less."""
    memory_probe: bool = False
    """Before training, find each bucket's largest batch that fits ``memory_limit_gb`` by running real
    steps (NeMo's OOMptimizer); caps are written to the run directory and kept in checkpoints."""
    memory_limit_gb: float | None = None
    """The probe's limit; null: the accelerator's total memory (the probe needs one on CPU)."""


PLUGIN_INFO = PluginInfo(
    description="2-D length bucketing with token-budget batches (Canary efficiency paper)",
    config=PaddingAwareSamplingConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "padding_aware_sampling", PaddingAwareSamplingConfig)
    if cfg.max_tokens <= 0:
        raise UsageError(f"padding_aware_sampling.max_tokens={cfg.max_tokens} must be positive.")
    if cfg.num_buckets < 1 or cfg.output_buckets < 1 or cfg.pool_batches < 1:
        raise UsageError("padding_aware_sampling.num_buckets, output_buckets and pool_batches must be at least 1.")
    if cfg.memory_limit_gb is not None and cfg.memory_limit_gb <= 0:
        raise UsageError(f"padding_aware_sampling.memory_limit_gb={cfg.memory_limit_gb} must be positive.")


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.padding_aware_sampling.report import PaddingReport  # imports Lightning: not at load time

    register(PaddingReport())
    cfg = section(config, "padding_aware_sampling", PaddingAwareSamplingConfig)
    if cfg.memory_probe:
        import torch

        from jevons.plugins.padding_aware_sampling.probe import MemoryProbe

        limit = cfg.memory_limit_gb
        if limit is None:
            if not torch.cuda.is_available():
                raise UsageError(
                    "padding_aware_sampling.memory_probe=true on the CPU needs "
                    "padding_aware_sampling.memory_limit_gb (there is no device memory to fill)."
                )
            limit = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        register(MemoryProbe(limit))


@hookimpl
def make_batch_sampler(dataset: MapDataset, config: Config, stage: str) -> BatchSampler | None:
    from jevons.framework.distributed import data_parallel_rank_and_size
    from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler

    cfg = section(config, "padding_aware_sampling", PaddingAwareSamplingConfig)
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise UsageError(f"padding_aware_sampling needs a dataset with lengths; {type(dataset).__name__} has none.")
    rank, world = data_parallel_rank_and_size()
    return BucketingBatchSampler(lengths, cfg, seed=config.seed, rank=rank, world_size=world, shuffle=stage == "train")
