"""What ``block_sparse_attention`` did in a run: kept-block density and mask-build time (``plugin_figures.block_sparse_attention``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from jevons.framework.attribution import Figure
from jevons.kernels import dispatch
from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor


class SparsityReport(pl.Callback):
    """Mean kept-block density and mask-build time of every block-sparse processor, over training steps."""

    def __init__(self) -> None:
        self.processors: list[BlockSparseWanProcessor] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        processors = [getattr(m, "processor", None) for m in pl_module.modules()]
        self.processors = [p for p in processors if isinstance(p, BlockSparseWanProcessor)]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not (trainer.is_global_zero and self.processors):
            return
        # Lightning sets Trainer.log_every_n_steps in its logger connector without declaring it.
        log_every: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        if trainer.global_step % max(1, log_every) == 0:
            kept = sum(p.stats.kept_blocks for p in self.processors)
            total = sum(p.stats.total_blocks for p in self.processors)
            if total:
                pl_module.log("train/attention_density", kept / total)

    def report(self) -> dict[str, Figure]:
        calls = sum(p.stats.calls for p in self.processors)
        if not calls:
            return {"attention_calls": "no block-sparse attention call was made"}
        total = sum(p.stats.total_blocks for p in self.processors)
        return {
            "mean_density": round(sum(p.stats.kept_blocks for p in self.processors) / total, 4),
            "attention_calls": calls,
            "mask_build_ms_per_call": round(1000 * sum(p.stats.mask_seconds for p in self.processors) / calls, 3),
            "kernel": ", ".join(sorted({d.choice for d in dispatch.decisions("block_sparse_attention")})) or "none",
        }
