"""Assembling the Lightning Trainer for a run: strategy, loggers, the framework's callbacks, the plugins'."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger

from jevons.framework.build import Built
from jevons.framework.callbacks import Evaluation, PeriodicCheckpoint, ResumableState, Throughput
from jevons.framework.config.schema import Config
from jevons.framework.data.loader import LoadedBatch
from jevons.framework.family import Family, FamilyBase
from jevons.framework.metrics_log import MetricsCSV
from jevons.framework.preemption import Preemption, requeue_marker
from jevons.framework.rundir import CHECKPOINTS
from jevons.framework.sharding import current_layout
from jevons.framework.strategy import JevonsParallelStrategy, JevonsShardedStrategy, JevonsStrategy


@dataclass
class FrameworkCallbacks:
    state: ResumableState
    checkpoint: PeriodicCheckpoint
    throughput: Throughput
    evaluation: Evaluation
    preemption: Preemption


def make_trainer(
    config: Config, family: Family, built: Built, run_dir: Path, config_yaml: str, resume_step: int | None
) -> tuple[pl.Trainer, FrameworkCallbacks]:
    trainer_cfg = config.trainer
    device = torch.device("cuda", torch.cuda.current_device()) if _use_cuda(config) else torch.device("cpu")
    checkpoint = PeriodicCheckpoint(
        run_dir / CHECKPOINTS, config.checkpoint.every_n_steps, config.checkpoint.save_final
    )
    ours = FrameworkCallbacks(
        state=ResumableState(built.batch_samplers["train"]),
        checkpoint=checkpoint,
        throughput=Throughput(getattr(family, "weight_unit", "samples"), _flops_counter(family, built)),
        evaluation=Evaluation(family, config, run_dir),
        preemption=Preemption(checkpoint, requeue_marker(run_dir)),
    )
    callbacks: list[pl.Callback] = [
        ours.state,
        ours.throughput,
        ours.checkpoint,
        ours.preemption,
        ours.evaluation,
        *built.callbacks,
    ]
    if trainer_cfg.progress_bar:
        # A bar redrawn every step floods logs that are not a terminal.
        refresh = 1 if sys.stderr.isatty() else max(1, trainer_cfg.max_steps // 20)
        callbacks.append(TQDMProgressBar(refresh_rate=refresh))
    accumulate = trainer_cfg.accumulate_grad_batches
    validate = trainer_cfg.limit_val_batches > 0
    loggers = [
        MetricsCSV(run_dir / "metrics.csv", resume_step=resume_step),
        TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
    ]
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    strategy_type: type[JevonsStrategy | JevonsParallelStrategy] = JevonsStrategy
    if world > 1:
        strategy_type = JevonsShardedStrategy if current_layout() is not None else JevonsParallelStrategy
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        strategy=strategy_type(device, config_yaml, config.checkpoint.keep_last),
        precision=trainer_cfg.precision,
        max_steps=trainer_cfg.max_steps,
        max_epochs=-1,
        # Validation every N optimizer steps, across epoch boundaries.
        val_check_interval=trainer_cfg.val_check_interval * accumulate if validate else None,
        check_val_every_n_epoch=None if validate else 1,
        limit_val_batches=trainer_cfg.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=trainer_cfg.progress_bar,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    return trainer, ours


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in str(record.msg)


def _use_cuda(config: Config) -> bool:
    if config.trainer.accelerator == "cpu":
        return False
    return torch.cuda.is_available()


def validation_due(trainer: pl.Trainer, ours: FrameworkCallbacks, config: Config) -> bool:
    """True when training ended on a step that was not validated (so the summary has a final val loss),
    unless it stopped on a signal: then the time left belongs to the checkpoint, not to validation."""
    if ours.preemption.stopped:
        return False
    return config.trainer.limit_val_batches > 0 and ours.evaluation.last_step != trainer.global_step


def quiet_libraries() -> None:
    """Hide library notices that are noise for Jevons runs (our sampler and workers are deliberate;
    Megatron-Core's fallbacks without Transformer Engine are expected on CPU)."""
    for handler in logging.getLogger("pytorch_lightning").handlers:
        if not any(isinstance(f, _NoAdverts) for f in handler.filters):
            handler.addFilter(_NoAdverts())
    for message in (
        ".*does not have many workers.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*You're resuming from a checkpoint that ended before the epoch ended.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        # We log with sync_dist=True; Lightning only warns because torch.distributed is up in a world of one.
        ".*It is recommended to use `self.log\\(.*sync_dist=True\\)`.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        "Transformer Engine and Apex are not installed.*",
        # Megatron's own layers call its mappings without a group; ours always pass one.
        "Warning: tp_group is None, using default tp group.*",
        # Buffers are identical on every rank (rotary tables), so not broadcasting them is right.
        ".*`broadcast_buffers` is deprecated.*",
        # Jevons starts its own processes (launcher=local or =slurm); srun being installed is not a hint.
        ".*The `srun` command is available on your system but is not used.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def _flops_counter(family: Family, built: Built) -> Callable[[Any], float | None] | None:
    """The family's analytic training FLOPs of a batch, where it counts them (FamilyBase's default does
    not) and the batches are the family's (a data-free objective's are noise seeds)."""
    from jevons.framework.objective import Objective

    count = getattr(type(family), "train_flops", None)
    if count is None or count is FamilyBase.train_flops:
        return None
    if isinstance(built.objective, Objective) and built.objective.dataset("train") is not None:
        return None
    return lambda batch: family.train_flops(built.model, batch.data if isinstance(batch, LoadedBatch) else batch)
