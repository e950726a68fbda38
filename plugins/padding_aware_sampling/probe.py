"""The memory probe of padding-aware sampling: per-bucket batch-size caps, found by running real steps.

As NeMo's OOMptimizer: for each bucket, batches of its longest sample are
grown (doubling, then bisecting) through the run's own model and objective,
forward and backward, until a step runs out of memory or its memory crosses
``padding_aware_sampling.memory_limit_gb``; the largest batch that fitted is
the bucket's cap. Buckets where the budget binds before memory does get no
cap. On CUDA the measure is the allocator's peak; on the CPU, where PyTorch
keeps no allocator statistics, it is the bytes of the distinct tensors
autograd saves for backward, weights excluded (the activations: the part that
grows with the batch), plus the parameters and their gradients.

The caps go into the sampler before the first batch is drawn, are written to
``padding_aware_sampling_caps.json`` in the run directory, and travel in the
sampler's checkpoint state, so a resumed run cuts the same batches without
probing again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from jevons.framework.callbacks import ResumableState
from jevons.framework.data.reader import Corrupt
from jevons.framework.module import JevonsModule
from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler

CAPS_FILE = "padding_aware_sampling_caps.json"


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def step_memory(model: torch.nn.Module, objective: Callable[[torch.nn.Module, Any], Any], batch: Any) -> int:
    """Bytes one forward and backward of ``batch`` needs (see the module docstring for what is counted)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        objective(model, batch).loss.backward()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}  # storage -> bytes: a tensor saved by several operations counts once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # weights saved for backward are not new memory
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = objective(model, batch).loss
    loss.backward()
    parameters = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)  # + gradients
    return sum(saved.values()) + parameters


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest ``n`` in ``[1, upper]`` with ``fits(n)`` (assumed monotone): doubling, then bisection.
    0 when even one sample does not fit."""
    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None and good < upper:
        trial = min(2 * good, upper)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def probe_bucket_caps(
    sampler: BucketingBatchSampler,
    dataset: Any,
    model: torch.nn.Module,
    objective: Any,
    limit_bytes: float,
    to_device: Callable[[Any], Any],
) -> dict[int, int]:
    """A batch-size cap for each bucket where memory binds before the sampler's budget does."""
    import numpy as np

    cfg = sampler.cfg
    caps: dict[int, int] = {}
    for bucket in np.unique(sampler.buckets):
        members = np.flatnonzero(sampler.buckets == bucket)
        longest = int(members[np.argmax(sampler.lengths[members, 0])])
        sample = dataset[longest]
        if isinstance(sample, Corrupt):
            continue
        length = float(sampler.lengths[longest, 0])
        upper = max(1, int(cfg.max_tokens // (length + cfg.quadratic * length**2)))
        if cfg.max_batch_size:
            upper = min(upper, cfg.max_batch_size)

        def fits(n: int, sample: Any = sample) -> bool:
            model.zero_grad(set_to_none=True)
            try:
                return step_memory(model, objective, to_device(dataset.collate([sample] * n))) <= limit_bytes
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not _is_out_of_memory(error):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                return False
            finally:
                model.zero_grad(set_to_none=True)

        largest = largest_fitting(fits, upper)
        if largest == 0:
            raise RuntimeError(
                f"padding_aware_sampling's memory probe: one sample of length {length:g} (bucket {bucket}) needs more "
                f"than memory_limit_gb={limit_bytes / 2**30:g}: raise the limit or filter long samples."
            )
        if largest < upper:
            caps[int(bucket)] = largest
    return caps


class MemoryProbe(pl.Callback):
    """Probes per-bucket caps at the start of fit (before Lightning sizes the epoch) unless a checkpoint had them."""

    def __init__(self, limit_gb: float) -> None:
        self.limit_bytes = limit_gb * 2**30
        self.caps: dict[int, int] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning sets Trainer.callbacks in its callback connector without declaring it.
        callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        state = next((c for c in callbacks if isinstance(c, ResumableState)), None)
        sampler = getattr(state, "batch_sampler", None)
        if not isinstance(sampler, BucketingBatchSampler):
            return
        if sampler.caps_probed:  # restored from the checkpoint being resumed
            self.caps = dict(sampler.bucket_caps)
            return
        assert isinstance(pl_module, JevonsModule), "Jevons trains a JevonsModule"
        rng = torch.get_rng_state()  # dropout in the probe's steps must not move the training stream
        was_training = pl_module.training
        pl_module.train()
        try:
            caps = probe_bucket_caps(
                sampler,
                pl_module.datasets["train"],
                pl_module.model,
                pl_module.objective,
                self.limit_bytes,
                lambda batch: pl_module.transfer_batch_to_device(batch, pl_module.device, 0),
            )
        finally:
            torch.set_rng_state(rng)
            pl_module.train(was_training)
        caps = _agree_across_ranks(caps, sampler.buckets)
        sampler.set_bucket_caps(caps)
        self.caps = caps
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / CAPS_FILE
            path.write_text(
                json.dumps(
                    {"memory_limit_gb": self.limit_bytes / 2**30, "caps": {str(b): n for b, n in sorted(caps.items())}},
                    indent=2,
                )
            )


def _agree_across_ranks(caps: dict[int, int], buckets: Any) -> dict[int, int]:
    """Every rank must cut the same batches: take each bucket's smallest cap over the ranks."""
    import numpy as np
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return caps
    numbers = np.unique(buckets)
    values = torch.tensor([caps.get(int(b), 2**31 - 1) for b in numbers], dtype=torch.int64)
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return {int(b): int(v) for b, v in zip(numbers, values.tolist()) if v < 2**31 - 1}
