"""``trainer.precision`` in every family: bf16-mixed and bf16-true train, sample, and stay near fp32.

Measured on the smoke-sized models (6 steps, lr without warm-up): the largest per-step relative
loss difference from ``32-true`` was 1e-5 (llm), 6.6e-4 (diffusion), 1e-4 (speech) and 2.8e-5
(mixed_modal) at ``bf16-mixed``; 1.7e-5, 1.9e-2, 3.4e-3 and 3.6e-3 at ``bf16-true``, whose weights and
optimizer state are bf16 too. The tolerances below are those with room to spare.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from jevons.framework.plugin import hookimpl

TOLERANCE = {"bf16-mixed": 3e-3, "bf16-true": 5e-2}
"""Largest per-step loss difference from fp32, relative to fp32's loss."""


class RecordDtypes(pl.Callback):
    """At the end of training: the dtypes of the parameters and of the optimizer's floating state."""

    def __init__(self) -> None:
        self.parameters: set[torch.dtype] = set()
        self.optimizer_state: set[torch.dtype] = set()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.parameters = {p.dtype for p in pl_module.parameters() if p.requires_grad}
        for optimizer in trainer.optimizers:
            for state in optimizer.state.values():
                self.optimizer_state |= {v.dtype for v in state.values() if torch.is_tensor(v) and v.ndim > 0}


class DtypePlugin:
    def __init__(self) -> None:
        self.recorder = RecordDtypes()

    @hookimpl
    def register_callbacks(self, register: Callable[[pl.Callback], None], config: Any) -> None:
        register(self.recorder)


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


@pytest.mark.parametrize("family", ["llm", "diffusion", "speech", "mixed_modal"])
def test_bf16_trains_samples_and_stays_near_fp32(family: str, train, smoke, run_root: Path) -> None:
    """Six steps and one validation with samples (the family's evaluate runs outside Lightning's
    precision context, on fp32 inputs) per precision; mixed keeps fp32 master weights and state."""
    losses, dtypes = {}, {}
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        plugin = DtypePlugin()
        result = train(
            [
                *smoke[family],
                f"trainer.precision={precision}",
                "trainer.max_steps=6",
                "trainer.val_check_interval=6",
                "trainer.log_every_n_steps=1",
                "optimizer.warmup_steps=0",
                "plugins=[dtypes]",
                f"run.root={run_root / precision}",
            ],
            plugins=[("dtypes", plugin)],
        )
        losses[precision] = _losses(result.run_dir)
        dtypes[precision] = (plugin.recorder.parameters, plugin.recorder.optimizer_state)
    reference = losses["32-true"]
    assert len(reference) == 6
    for precision, tolerance in TOLERANCE.items():
        assert losses[precision].keys() == reference.keys()
        worst = max(abs(losses[precision][k] - reference[k]) / abs(reference[k]) for k in reference)
        assert worst <= tolerance, f"{precision}: largest relative loss difference from fp32 {worst:.3g}"
        assert worst > 0, f"{precision} computed exactly what fp32 did: the precision setting had no effect"
    assert dtypes["bf16-mixed"] == ({torch.float32}, {torch.float32}), "mixed keeps fp32 master weights and state"
    assert dtypes["bf16-true"] == ({torch.bfloat16}, {torch.bfloat16})


def test_lora_on_megatron_linears_under_bf16_mixed(train, tiny) -> None:
    """A frozen base takes Megatron's frozen-weight linear path, which crashed under CPU autocast too."""
    plugin = DtypePlugin()
    train([*tiny("trainer.precision=bf16-mixed", "plugins=[lora,dtypes]")], plugins=[("dtypes", plugin)])
    assert plugin.recorder.parameters == {torch.float32}
