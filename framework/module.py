"""The generic LightningModule: runs whatever objective, optimizer and generator the hooks produced.

It knows no model and no method. Training and validation steps call the
objective on ``(model, batch)``; the optimizer and schedule were built before
``fit`` by ``make_optimizer`` (or the default AdamW); logging is Lightning's.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.framework.optim import Optimization


class JevonsModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, objective: Objective, optimization: Optimization, generator: Any) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimization = optimization
        # Not a submodule: a generator usually holds the model, whose weights must not appear twice.
        object.__setattr__(self, "generator", generator)
        self.last_weight = 0
        """What the last training batch's loss was a mean over (real tokens or samples)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self._run_objective(batch)
        self.last_weight = out.weight
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=out.weight)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=out.weight)
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        out = self._run_objective(batch)
        # Weighted by real tokens/samples, so the epoch mean is the dataset mean, not a mean of batch means.
        self.log("val/loss", out.loss, prog_bar=True, on_epoch=True, batch_size=out.weight, sync_dist=True)
        for name, value in out.metrics.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=out.weight, sync_dist=True)

    def _run_objective(self, batch: Any) -> ObjectiveOutput:
        out = self.objective(self.model, batch)
        if not isinstance(out, ObjectiveOutput):
            raise TypeError(f"{type(self.objective).__name__} returned {type(out).__name__}, expected ObjectiveOutput")
        return out

    def configure_optimizers(self) -> Any:
        scheduler = self.optimization.scheduler
        if scheduler is None:
            return self.optimization.optimizer
        return {
            "optimizer": self.optimization.optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
