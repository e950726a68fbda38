"""A Lightning callback writing one JSON line per training step into the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class LossLog(pl.Callback):
    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        record = {
            "step": trainer.global_step,
            "loss": float(outputs["loss"]),
            "optimizer": type(trainer.optimizers[0]).__name__,
        }
        with open(Path(trainer.default_root_dir) / self.name, "a") as handle:
            handle.write(json.dumps(record) + "\n")
