"""The moving average as a Lightning callback: updated after optimizer steps, swapped in for validation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from jevons.framework.attribution import Figure
from jevons.framework.errors import UsageError
from jevons.framework.optim import optimized_by_model_optimizer


class ExponentialMovingAverage(pl.Callback):
    """``average = d * average + (1 - d) * weights`` over ``pl_module.model``'s trained parameters.

    The update for an optimizer step is applied once, by whichever comes first after it: the end of
    the batch, or a checkpoint saved at that step (the framework's checkpoint callback runs before
    plugins'), so a checkpoint at step N holds the average of steps 1..N and a resume is exact.
    """

    def __init__(self, decay: float, warmup: bool, every_n_steps: int, validate: bool) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.every_n_steps = every_n_steps
        self.validate = validate
        self.average: dict[str, torch.Tensor] = {}
        self.updates = 0
        self.averaged_step = 0
        """The last optimizer step folded into the average."""
        self.world_size = 1
        self._trainer: pl.Trainer | None = None
        self._parameters: dict[str, torch.nn.Parameter] = {}
        self._trained_weights: dict[str, torch.Tensor] | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self.world_size = trainer.world_size
        model = getattr(pl_module, "model", pl_module)
        self._parameters = {name: p for name, p in model.named_parameters() if optimized_by_model_optimizer(p)}
        if not self.average:  # a fresh run; a resume loaded the saved average
            self.average = {name: p.detach().float().clone() for name, p in self._parameters.items()}
        elif self.average.keys() != self._parameters.keys() or any(
            self.average[n].shape != p.shape for n, p in self._parameters.items()
        ):
            missing = sorted(
                {*(set(self._parameters) ^ set(self.average))}
                | {n for n, p in self._parameters.items() if n in self.average and self.average[n].shape != p.shape}
            )[:3]
            raise UsageError(
                f"ema: the checkpoint's average does not match the parameters this model trains ({', '.join(missing)} "
                f"differ in name or shape). Resume with the plugins, config and parallel layout the run was saved with."
            )
        else:  # loaded on the CPU
            self.average = {n: a.to(self._parameters[n].device) for n, a in self.average.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._catch_up()

    @torch.no_grad()
    def _catch_up(self) -> None:
        step = self._trainer.global_step if self._trainer is not None else 0
        if step <= self.averaged_step or not self._parameters:
            return
        self.averaged_step = step
        if step % self.every_n_steps:
            return
        decay = self.current_decay()
        names = list(self.average)
        torch._foreach_lerp_(
            [self.average[n] for n in names], [self._parameters[n].detach().float() for n in names], 1.0 - decay
        )
        self.updates += 1

    @torch.no_grad()
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.validate or not self._parameters:
            return
        self._catch_up()
        self._trained_weights = {n: p.detach().clone() for n, p in self._parameters.items()}
        for name, p in self._parameters.items():
            p.copy_(self.average[name])

    @torch.no_grad()
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trained_weights is None:
            return
        for name, p in self._parameters.items():
            p.copy_(self._trained_weights[name])
        self._trained_weights = None

    def state_dict(self) -> dict[str, Any]:
        self._catch_up()
        return {
            "average": self.average,
            "updates": self.updates,
            "averaged_step": self.averaged_step,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._trainer is not None and state_dict["world_size"] != self._trainer.world_size:
            raise UsageError(
                f"ema: the checkpoint's average was saved by {state_dict['world_size']} processes, each holding its "
                f"own shards; resume it with the same launcher.nproc and parallel layout."
            )
        self.average = dict(state_dict["average"])
        self.updates = int(state_dict["updates"])
        self.averaged_step = int(state_dict["averaged_step"])
        self.world_size = int(state_dict["world_size"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def report(self) -> dict[str, Figure]:
        return {
            "updates": self.updates,
            "decay_now": round(self.current_decay(), 6),
            "averaged_tensors": len(self.average),
        }


@torch.no_grad()
def load_average(model: torch.nn.Module, state: dict[str, Any], source: str) -> int:
    """Copy the moving average saved in a checkpoint's ``state`` (its callbacks' state) into ``model``'s
    parameters, for sampling and export from the average (``ema=true``). Returns the tensors copied."""
    saved = [v for k, v in state.get("callbacks", {}).items() if k.startswith(ExponentialMovingAverage.__qualname__)]
    if not saved or not saved[0].get("average"):
        raise UsageError(f"{source} holds no moving average: the run was trained without plugins=[ema]. Drop ema=true.")
    if saved[0].get("world_size", 1) != 1:
        raise UsageError(
            f"{source}: its moving average was saved by {saved[0]['world_size']} processes, each holding its own "
            f"shards, and is not resharded; ema=true loads the average of a run trained in one process."
        )
    average: dict[str, torch.Tensor] = saved[0]["average"]
    parameters = dict(model.named_parameters())
    missing = sorted(set(average) - set(parameters))
    if missing:
        raise UsageError(f"{source}: the moving average names parameters this model lacks ({', '.join(missing[:3])}).")
    for name, value in average.items():
        parameters[name].copy_(value.to(parameters[name].dtype))
    return len(average)
