"""The framework's own Lightning callbacks: resumable state, checkpoints, throughput, evaluation.

Training events are observed through Lightning callbacks, never a second
copy of Lightning's events in pluggy (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from jevons.framework.checkpoint_dirs import checkpoint_name
from jevons.framework.compat import lightning_logged_step, lightning_should_update_logs
from jevons.framework.family import EvalContext, Family
from jevons.framework.sharding import gathered_root
from jevons.kernels import dispatch


class ResumableState(pl.Callback):
    """Data position and RNG streams, saved in checkpoints and restored exactly.

    The position counts batches *consumed* by training steps (Lightning and the
    DataLoader prefetch ahead, so the sampler's own progress is not it).
    RNG states are restored just before the first training step after a
    resume, because Lightning draws from the global RNG while setting up the
    DataLoader; validation runs on a forked RNG so that evaluating (or not,
    after a resume) never changes the training stream.
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.position = 0
        self._epoch = -1
        self._pending_rng: dict[str, Any] | None = None
        self._rng_before_validation: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self._epoch:  # a new epoch, not the one a resume continues
            self._epoch, self.position = trainer.current_epoch, 0
            # Lightning sets the epoch of ``batch_sampler.sampler`` only; a Jevons batch sampler has none
            # (before this call every epoch repeated the first one's order, and a resume changed it).
            _set_epoch(self.batch_sampler, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        self.position += 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rng_before_validation = _rng_state()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng_before_validation is not None:
            _set_rng_state(self._rng_before_validation)
            self._rng_before_validation = None

    def state_dict(self) -> dict[str, Any]:
        sampler_state = self.batch_sampler.state_dict() if hasattr(self.batch_sampler, "state_dict") else {}
        return {"epoch": self._epoch, "position": self.position, "sampler": sampler_state, "rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self.position = int(state["epoch"]), int(state["position"])
        if hasattr(self.batch_sampler, "load_state_dict"):
            self.batch_sampler.load_state_dict(state["sampler"])
        if hasattr(self.batch_sampler, "__len__") and self.position >= len(self.batch_sampler):
            # Saved after an epoch's last batch: Lightning resumes into the next epoch (without its
            # epoch-start hook), so the sampler starts that epoch from its first batch.
            self._epoch, self.position = self._epoch + 1, 0
            _set_epoch(self.batch_sampler, self._epoch)
        self.batch_sampler.resume(self._epoch, self.position)
        self._pending_rng = state["rng"]


def _set_epoch(batch_sampler: Any, epoch: int) -> None:
    """``batch_sampler.set_epoch(epoch)`` where it has one (a plugin's sampler need not order by epoch)."""
    set_epoch = getattr(batch_sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    numpy_state: Any = np.random.get_state(legacy=True)  # the legacy form is a 5-tuple
    kind, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PeriodicCheckpoint(pl.Callback):
    """Save a checkpoint every ``every_n_steps`` optimizer steps and, optionally, at the end."""

    def __init__(self, root: Path, every_n_steps: int | None, save_final: bool) -> None:
        self.root = root
        self.every_n_steps = every_n_steps
        self.save_final = save_final
        self.last_saved_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_final:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Save at the current step, once."""
        if trainer.global_step == self.last_saved_step:
            return
        trainer.save_checkpoint(self.root / checkpoint_name(trainer.global_step), weights_only=False)
        self.last_saved_step = trainer.global_step


class Throughput(pl.Callback):
    """Real tokens (or samples: the family's ``weight_unit``) per second through training steps,
    validation excluded; and, where the family counts its model FLOPs (``train_flops``), model FLOPs
    utilisation: those FLOPs per second over this device's measured peak matmul rate in the run's
    precision (:mod:`jevons.framework.flops`, :mod:`jevons.kernels.peak`)."""

    def __init__(self, unit: str = "samples", flops: Callable[[Any], float | None] | None = None) -> None:
        self.unit = unit
        self.flops = flops
        self._bar_label = {"tokens": "tok/s", "samples": "samples/s"}.get(unit, f"{unit}/s")
        self.total_weight = 0
        self.total_flops = 0.0
        self.total_seconds = 0.0
        self.flop_seconds = 0.0  # seconds of the steps whose FLOPs were counted
        self.peak_flops_per_s: float | None = None
        self._start = 0.0
        self._measuring_at_start = 0.0
        self._recent: list[tuple[int, float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flops is not None and self.peak_flops_per_s is None:
            from jevons.framework import distributed
            from jevons.kernels.peak import PRECISION_DTYPES, peak_matmul_flops

            dtype = PRECISION_DTYPES.get(str(trainer.precision), torch.float32)
            # Rank 0 measures alone (ranks sharing a machine would slow each other) and tells the others.
            peak = (
                peak_matmul_flops(pl_module.device, dtype, dispatch.machine_cache()) if trainer.is_global_zero else 0.0
            )
            self.peak_flops_per_s = float(distributed.broadcast_from_rank_zero(("peak", peak), "peak")[1])

    def on_train_batch_start(self, *args: Any) -> None:
        self._measuring_at_start = dispatch.measuring_seconds()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Kernel dispatch measures candidates on a step's first call of a new shape: not training time.
        measuring = dispatch.measuring_seconds() - self._measuring_at_start
        seconds = max(0.0, time.perf_counter() - self._start - measuring)
        weight = getattr(pl_module, "last_weight", 0)
        flops = (self.flops(batch) or 0.0) if self.flops is not None else 0.0
        self.total_weight += weight
        self.total_flops += flops
        self.total_seconds += seconds
        self.flop_seconds += seconds if flops else 0.0
        self._recent = ([*self._recent, (weight, flops, seconds)])[-20:]
        # Loggers only record every log_every_n_steps, and log() costs ~1 ms: log on those steps alone.
        if not lightning_should_update_logs(trainer):
            return
        recent_seconds = max(1e-9, sum(s for _, _, s in self._recent))
        recent = sum(w for w, _, _ in self._recent) / recent_seconds
        pl_module.log(self._bar_label, recent, prog_bar=True, logger=False)
        pl_module.log(f"train/{self.unit}_per_s", recent, prog_bar=False)
        if self.peak_flops_per_s:
            mfu = sum(f for _, f, _ in self._recent) / recent_seconds / self.peak_flops_per_s
            pl_module.log("mfu", mfu, prog_bar=True, logger=False)
            pl_module.log("train/mfu", mfu, prog_bar=False)
        pl_module.log("time/train_s", self.total_seconds, prog_bar=False)  # the x axis of loss-over-time plots

    @property
    def mean(self) -> float:
        return self.total_weight / self.total_seconds if self.total_seconds else 0.0

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation over the whole run (None where the family does not count FLOPs)."""
        if not self.peak_flops_per_s or not self.flop_seconds or not self.total_flops:
            return None
        return self.total_flops / self.flop_seconds / self.peak_flops_per_s

    def state_dict(self) -> dict[str, Any]:
        # Kept in checkpoints so a resumed run's time axis and mean continue instead of restarting.
        return {
            "total_weight": self.total_weight,
            "total_seconds": self.total_seconds,
            "total_flops": self.total_flops,
            "flop_seconds": self.flop_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_weight, self.total_seconds = state["total_weight"], state["total_seconds"]
        self.total_flops = float(state.get("total_flops", 0.0))  # absent in checkpoints older than MFU
        self.flop_seconds = float(state.get("flop_seconds", 0.0))


class Evaluation(pl.Callback):
    """After each validation: the family writes samples and returns extra metrics, logged at this step."""

    def __init__(self, family: Family, config: Any, run_dir: Path) -> None:
        self.family = family
        self.config = config
        self.run_dir = run_dir
        self.metrics: dict[str, float] = {}
        self.artifacts: list[Path] = []
        self.last_step = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last_step = trainer.global_step
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        tensorboard = next(
            (lg.experiment for lg in trainer.loggers if isinstance(lg, pl.loggers.TensorBoardLogger)), None
        )
        context = EvalContext(
            model=pl_module.model,
            generator=pl_module.generator,
            config=self.config,
            run_dir=self.run_dir,
            step=trainer.global_step,
            is_rank_zero=trainer.is_global_zero,
            tensorboard=tensorboard if trainer.is_global_zero else None,
            metrics=val,
        )
        model = pl_module.model
        assert isinstance(model, torch.nn.Module)
        was_training = model.training
        model.eval()
        with torch.no_grad(), gathered_root(model):
            extra = self.family.evaluate(context) or {}
        model.train(was_training)
        self.metrics = {**val, **{k: float(v) for k, v in extra.items()}}
        self.artifacts = context.artifacts
        if extra:
            # The step Lightning used for this validation's own metrics, so they share a row.
            step = lightning_logged_step(trainer)
            for logger in trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in extra.items()}, step=step)
