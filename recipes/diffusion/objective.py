"""Rectified flow (Liu et al., 2022, "Flow Straight and Fast"), as Stable Diffusion 3 trains it.

``x_t = (1 - t) x_0 + t * noise`` and the model predicts the velocity
``noise - x_0``; ``t`` is drawn logit-normal (Esser et al., 2024), which puts
more of the training signal at intermediate noise levels. With probability
``conditioning.dropout`` a sample's condition becomes the unconditional one
(its conditioner's: "no digit", or the negative prompt), so the same
model also learns the unconditional velocity classifier-free guidance needs
(Ho & Salimans, 2022). The loss is the mean squared error over every element.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.recipes.diffusion.generate import conditioner_of
from jevons.recipes.diffusion.model import DiffusionModel


def add_noise(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * clean + sigma * noise`` with ``sigma`` of shape ``(B,)`` broadcast over ``(B, C, F, H, W)``."""
    s = sigma.view(-1, *([1] * (clean.ndim - 1)))
    return (1.0 - s) * clean + s * noise


class RectifiedFlowObjective(Objective):
    def __init__(self, condition_dropout: float = 0.1) -> None:
        super().__init__()
        self.condition_dropout = condition_dropout

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        conditioner = conditioner_of(model)
        clean = cast(DiffusionModel, model).clean(batch)  # (B, C, F, H, W): pixels or latents
        condition = conditioner.from_batch(batch)
        batch_size = clean.shape[0]
        sigma = torch.sigmoid(torch.randn(batch_size, device=clean.device))  # logit-normal(0, 1)
        noise = torch.randn_like(clean)
        if self.training and self.condition_dropout > 0:
            dropped = torch.rand(batch_size, device=clean.device) < self.condition_dropout
            condition = conditioner.drop(condition, dropped)
        velocity = model(add_noise(clean, noise, sigma), sigma, condition)
        return ObjectiveOutput(loss=F.mse_loss(velocity.float(), (noise - clean).float()), weight=batch_size)
