"""What LoRA did in a run, in figures for the run summary (``plugin_figures.lora``)."""

from __future__ import annotations

import pytorch_lightning as pl

from jevons.framework.attribution import Figure
from jevons.framework.optim import optimized_by_model_optimizer
from jevons.plugins.lora.inject import adapter_parameters


class LoRAReport(pl.Callback):
    """How much of the model the adapters are: the figures a reader checks a LoRA run's memory against."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, Figure] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        # The student's own: a fake-score adapter on a shared base is the objective's (framework/optim.py).
        adapters = {n: p for n, p in adapter_parameters(model).items() if optimized_by_model_optimizer(p)}
        trained = sum(p.numel() for p in model.parameters() if optimized_by_model_optimizer(p))
        total = sum(p.numel() for p in model.parameters())
        self.figures = {
            "adapter_params": sum(p.numel() for p in adapters.values()),
            "trained_params": trained,
            "model_params": total,
            "trained_fraction": round(trained / max(1, total), 6),
        }

    def report(self) -> dict[str, Figure]:
        return self.figures or {"adapters": "training did not start"}
