"""The default optimizer (AdamW) and the learning-rate schedule every optimizer gets.

AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay on matrices
only: parameters with fewer than two dimensions (norm gains, biases) are not
decayed, as in GPT-2 and Llama training. The schedule is linear warm-up then
cosine (or linear, or constant) decay to ``lr * min_lr_ratio`` at
``trainer.max_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from jevons.framework.config.schema import Config, OptimizerConfig


@dataclass
class Optimization:
    """An optimizer and, optionally, its own per-step LR scheduler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


OBJECTIVE_OWNED = "jevons_objective_owned"
"""A parameter attribute (as Megatron marks ``tensor_model_parallel``): set on parameters that sit in the
model but are trained by the objective's own optimizer (step distillation's fake-score adapter on a
shared base), so the model's optimizers leave them alone."""


def mark_objective_owned(parameters: list[torch.nn.Parameter]) -> None:
    for p in parameters:
        setattr(p, OBJECTIVE_OWNED, True)


def optimized_by_model_optimizer(p: torch.nn.Parameter) -> bool:
    """Trainable, and not trained by the objective's own optimizer."""
    return p.requires_grad and not getattr(p, OBJECTIVE_OWNED, False)


def default_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter (but the objective's own), weight decay on ≥2-D ones only."""
    cfg = config.optimizer
    params = [p for p in model.parameters() if optimized_by_model_optimizer(p)]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps
    )


def lr_multiplier(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """The factor applied to each group's base lr after ``step`` optimizer steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def as_optimization(answer: Any, config: Config) -> Optimization:
    """Normalise a ``make_optimizer`` answer; attach the configured schedule where it has none."""
    if isinstance(answer, Optimization):
        optimization = answer
    elif isinstance(answer, torch.optim.Optimizer):
        optimization = Optimization(answer)
    else:
        raise TypeError(f"make_optimizer must return a torch.optim.Optimizer or an Optimization, got {answer!r}")
    if optimization.scheduler is None:
        cfg, max_steps = config.optimizer, config.trainer.max_steps

        # A plain function: LambdaLR saves a callable object's attributes in its
        # state_dict, which would put a dataclass into the checkpoint.
        def schedule(step: int) -> float:
            return lr_multiplier(step, cfg, max_steps)

        optimization.scheduler = torch.optim.lr_scheduler.LambdaLR(optimization.optimizer, schedule)
    return optimization
