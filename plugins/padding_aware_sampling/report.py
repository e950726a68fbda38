"""What padding-aware sampling did in a run: padding of the batches consumed, real length units per second."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from jevons.framework.attribution import Figure, TrainStepTimer
from jevons.plugins.padding_aware_sampling.sampler import BucketingBatchSampler


class PaddingReport(TrainStepTimer, pl.Callback):
    """Padding in the training batches this run consumed, and real (unpadded) length units per second."""

    def __init__(self) -> None:
        super().__init__()
        self.sampler: BucketingBatchSampler | None = None
        self.totals = [0.0, 0.0, 0.0, 0.0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        self.sampler = sampler if isinstance(sampler, BucketingBatchSampler) else None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end()
        indices = getattr(batch, "indices", None)  # the samples this batch holds, after any that failed to load
        if self.sampler is not None and indices:
            for i, value in enumerate(self.sampler.padding_of(indices)):
                self.totals[i] += value

    def report(self) -> dict[str, Figure]:
        if self.sampler is None or not self.totals[1]:
            return {"batches": "no batch came from the bucketing sampler"}
        real, padded, real_out, padded_out = self.totals
        figures: dict[str, Figure] = {
            "padding_fraction": round(1 - real / padded, 4),
            "padded_positions": int(padded - real),
            "real_length_units_per_s": round(real / self.seconds, 1) if self.seconds else 0.0,
            "mean_real_per_batch": round(real / self.steps, 1),
        }
        if padded_out:
            figures["output_padding_fraction"] = round(1 - real_out / padded_out, 4)
        return figures
