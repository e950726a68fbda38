"""The generic LightningModule: runs whatever objective, optimizer and generator the hooks produced.

It knows no model and no method. Training and validation steps call the
objective on ``(model, batch)``; the optimizer and schedule were built before
``fit`` by ``make_optimizer`` (or the default AdamW); logging is Lightning's.

Two parallel details live here because every objective needs them:

* Data parallelism. An objective returns a mean over its batch's ``weight``
  (real tokens, samples). DDP averages gradients over ranks, which would
  weight every rank's mean equally even when ranks hold different numbers of
  real tokens; the loss is rescaled by ``weight * dp / global_weight`` so the
  averaged gradient is the gradient of the global token mean, exactly as one
  process would compute it on the whole global batch. Ulysses peers (``parallel.ulysses``) hold
  shares of the same samples' tokens: their gradients must add, not average, so the loss is also
  multiplied by the Ulysses size.
* Tensor and sharded data parallelism. Gradient clipping needs the norm of the *whole* model:
  sharded parameters contribute every rank's part, replicated ones once.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from jevons.framework.data.loader import LoadedBatch
from jevons.framework.errors import TrainingStopped
from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.framework.optim import Optimization
from jevons.framework.sharding import current_layout, local_tensor


class JevonsModule(pl.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        optimization: Optimization,
        generator: Any,
        nonfinite: str = "skip",
        max_consecutive_nonfinite: int = 5,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimization = optimization
        # Not a submodule: a generator usually holds the model, whose weights must not appear twice.
        object.__setattr__(self, "generator", generator)
        self.last_weight = 0
        """What the last training batch's loss was a mean over (real tokens or samples)."""
        self.last_batch_indices: list[int] = []
        """Dataset indices of the last batch (train or val) this process consumed."""
        self.data_lost: dict[str, dict[str, Any]] = {}
        """Per split, samples found unreadable while reading (scan-time losses are on the datasets)."""
        self.datasets: dict[str, Any] = {}
        self.train_metric_sums: dict[str, tuple[float, int]] = {}
        """Per objective metric, its sum and count over this process's training steps (the summary's means)."""
        self.nonfinite = nonfinite
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped_steps: list[int] = []
        """Global steps whose update was skipped for a non-finite loss or gradient."""
        self._consecutive_skips = 0
        self._groups = _ParallelGroups()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        batch = self._unpack(batch, "train")
        out = self._run_objective(batch)
        loss, logged = out.loss, out.loss.detach()
        if self._groups.data_parallel_size > 1:
            totals = torch.tensor([float(out.weight), out.loss.item() * out.weight], dtype=torch.float64)
            dist.all_reduce(totals, group=self._groups.data_parallel)
            loss = out.loss * (out.weight * self._groups.data_parallel_size / totals[0].item())
            logged = (totals[1] / totals[0]).float()
        if self._groups.ulysses_size > 1:  # DDP averages over Ulysses peers; their token shares must add up
            loss = loss * self._groups.ulysses_size
        self.last_weight = out.weight
        self.log("train/loss", logged, prog_bar=True, batch_size=out.weight)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=out.weight)
            total, count = self.train_metric_sums.get(name, (0.0, 0))
            self.train_metric_sums[name] = (total + float(value), count + 1)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        batch = self._unpack(batch, "val")
        out = self._run_objective(batch)
        # Weighted by real tokens/samples, so the epoch mean is the dataset mean, not a mean of batch means.
        self.log("val/loss", out.loss, prog_bar=True, on_epoch=True, batch_size=out.weight, sync_dist=True)
        for name, value in out.metrics.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=out.weight, sync_dist=True)

    def _unpack(self, batch: Any, stage: str) -> Any:
        """The family's batch out of the loader's LoadedBatch; unreadable samples are counted here."""
        if not isinstance(batch, LoadedBatch):
            return batch
        self.last_batch_indices = batch.indices
        if batch.lost:
            known = self.data_lost.setdefault(stage, {})
            for loss in batch.lost:
                known[f"{loss.url}:{loss.key}"] = loss
            dataset = self.datasets.get(stage)
            if dataset is not None and hasattr(dataset, "check_losses"):
                dataset.check_losses(len(known))
        return batch.data

    def _run_objective(self, batch: Any) -> ObjectiveOutput:
        out = self.objective(self.model, batch)
        if not isinstance(out, ObjectiveOutput):
            raise TypeError(f"{type(self.objective).__name__} returned {type(out).__name__}, expected ObjectiveOutput")
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The non-finite policy: every rank sees the same verdict, so none hangs in a collective."""
        grads = [
            local_tensor(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        finite = bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()) if grads else True
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([0.0 if finite else 1.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            finite = flag.item() == 0.0
        if finite:
            self._consecutive_skips = 0
            return
        step = self.trainer.global_step
        if self.nonfinite == "stop":
            raise TrainingStopped(f"non-finite loss or gradient at step {step} (trainer.nonfinite=stop).")
        self._consecutive_skips += 1
        if self._consecutive_skips > self.max_consecutive_nonfinite:
            raise TrainingStopped(
                f"{self._consecutive_skips} non-finite steps in a row, the last at step {step}: training has diverged "
                f"(trainer.max_consecutive_nonfinite={self.max_consecutive_nonfinite}). Lower optimizer.lr or resume from "
                f"an earlier checkpoint."
            )
        self.skipped_steps.append(step)
        for group in optimizer.param_groups:  # optimizers skip parameters without a gradient: nothing changes
            for p in group["params"]:
                p.grad = None
        self.log("train/nonfinite_skipped", float(len(self.skipped_steps)))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.objective.checkpoint_state() if isinstance(self.objective, Objective) else {}
        if state:
            checkpoint["objective_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "objective_state" in checkpoint and isinstance(self.objective, Objective):
            self.objective.load_checkpoint_state(checkpoint["objective_state"])

    def configure_optimizers(self) -> Any:
        scheduler = self.optimization.scheduler
        if scheduler is None:
            return self.optimization.optimizer
        return {
            "optimizer": self.optimization.optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        sharded = self._groups.tensor_parallel_size > 1 or self._groups.shard is not None
        if not sharded or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip_global_norm(self.parameters(), float(gradient_clip_val), self._groups)


class _ParallelGroups:
    """Megatron's groups as this process sees them (sizes 1 outside a parallel run)."""

    def __init__(self) -> None:
        from megatron.core import parallel_state

        initialised = dist.is_initialized() and parallel_state.model_parallel_is_initialized()
        self.data_parallel = parallel_state.get_data_parallel_group() if initialised else None
        self.data_parallel_size = parallel_state.get_data_parallel_world_size() if initialised else 1
        self.tensor_parallel = parallel_state.get_tensor_model_parallel_group() if initialised else None
        self.tensor_parallel_size = parallel_state.get_tensor_model_parallel_world_size() if initialised else 1
        self.tensor_parallel_rank = parallel_state.get_tensor_model_parallel_rank() if initialised else 0
        self.ulysses_size = parallel_state.get_context_parallel_world_size() if initialised else 1
        layout = current_layout()
        self.shard = layout.shard_group if layout is not None else None
        """FSDP's shard group: its ranks hold disjoint pieces of each parameter (None: not sharded)."""


def clip_global_norm(parameters: Any, max_norm: float, groups: _ParallelGroups) -> torch.Tensor:
    """Clip gradients to a global L2 norm across tensor-parallel and FSDP shards; returns the norm.

    Equals ``torch.nn.utils.clip_grad_norm_`` on the unsharded model: each rank sums the squares of
    its own pieces (TP-replicated parameters on TP rank 0 only), summed over the TP group and over
    FSDP's shard group, whose ranks hold disjoint pieces (HSDP replicas hold the same ones).
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:  # a skipped non-finite step dropped every gradient, on every rank alike
        return torch.zeros(())
    grads = [local_tensor(p.grad) for p in params]
    squares = torch.zeros((), dtype=torch.float64)
    for p, grad in zip(params, grads):
        if getattr(p, "tensor_model_parallel", False) or groups.tensor_parallel_rank == 0:
            squares += grad.detach().double().pow(2).sum()
    if groups.tensor_parallel_size > 1:
        dist.all_reduce(squares, group=groups.tensor_parallel)
    if groups.shard is not None:
        dist.all_reduce(squares, group=groups.shard)
    total = squares.sqrt().float()
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coefficient)
    return total
