"""What Muon did in a run, in figures for the run summary (``plugin_figures.muon``)."""

from __future__ import annotations

import pytorch_lightning as pl

from jevons.framework.attribution import Figure, TrainStepTimer
from jevons.plugins.muon.optimizer import Muon


class MuonReport(TrainStepTimer, pl.Callback):
    """What Muon did in a run: the parameters it took and the time its updates cost."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizer: Muon | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.optimizer = next((o for o in trainer.optimizers if isinstance(o, Muon)), None)

    def report(self) -> dict[str, Figure]:
        if self.optimizer is None or not self.optimizer.updates:
            return {"optimizer": "no Muon step was taken"}
        opt = self.optimizer
        counts = {True: 0, False: 0}
        for group in opt.param_groups:
            counts[bool(group["use_muon"])] += sum(p.numel() for p in group["params"])
        update_ms = 1e3 * opt.update_seconds / opt.updates
        return {
            "muon_params_fraction": round(counts[True] / max(1, counts[True] + counts[False]), 4),
            "optimizer_steps": opt.updates,
            "optimizer_step_ms": round(update_ms, 3),
            "optimizer_share_of_train_step": round(opt.update_seconds / self.seconds, 4) if self.seconds else 0.0,
        }
