"""Rectified-flow arithmetic, noise seeds and the few-step student sampler shared by the distillation methods.

The diffusion family's model predicts the velocity ``v = noise - x0`` at
``x_sigma = (1 - sigma) x0 + sigma noise``. From one prediction at ``(x, sigma)``:
``x0 = x - sigma v`` and ``noise = x + (1 - sigma) v``; re-noising that pair to
``sigma'`` is exactly an Euler step ``x + (sigma' - sigma) v`` (the flow
analogue of a DDIM step, which TDM's sampler takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from jevons.recipes.diffusion.conditioning import Condition, Conditioner
from jevons.recipes.diffusion.generate import DiffusionSampler, guided_velocity

SEED_STRIDE = 1_000_003
"""Seeds of different runs' samples are ``run_seed * SEED_STRIDE + index``."""


def expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def x0_and_noise(x: torch.Tensor, sigma: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = expand(sigma, x)
    return x - s * velocity, x + (1.0 - s) * velocity


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = expand(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def diffuse(x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Forward-diffuse ``x`` at ``sigma_from`` to ``sigma_to >= sigma_from`` with fresh Gaussian noise:
    the marginal of ``x_{sigma_to}`` given ``x_{sigma_from}`` under ``x_s = (1 - s) x0 + s noise``."""
    a = (1.0 - sigma_to) / (1.0 - sigma_from).clamp(min=1e-6)
    b = (sigma_to**2 - (a * sigma_from) ** 2).clamp(min=0.0).sqrt()
    return expand(a, x) * x + expand(b, x) * fresh


def shifted_schedule(steps: int, shift: float) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 to 0, evenly spaced then shifted as FlowMatchEulerDiscreteScheduler does."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * sigmas / (1.0 + (shift - 1.0) * sigmas)).float()


def seeded_inputs(
    seeds: torch.Tensor, shape: Sequence[int], conditioner: Conditioner
) -> tuple[torch.Tensor, Condition]:
    """Noise ``(B, *shape)`` and conditions drawn by the family's ``conditioner`` (a digit, a prompt),
    each sample's from its own seed: the condition first, then the noise."""
    noises, conditions = [], []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        conditions.append(conditioner.draw(generator))
        noises.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(noises), Condition.cat(conditions)


class NoiseSeeds:
    """A data-free objective's dataset: sample ``i`` is the seed ``offset + i`` of its noise and condition."""

    def __init__(self, length: int, offset: int) -> None:
        self.length = length
        self.offset = offset
        self.lengths = np.ones(length, dtype=np.int64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:
        return self.offset + int(i)

    @staticmethod
    def collate(seeds: list[int]) -> dict[str, torch.Tensor]:
        return {"seeds": torch.tensor(seeds, dtype=torch.long)}


@torch.no_grad()
def sample_on_schedule(
    model: Any, noise: torch.Tensor, condition: Condition, sigmas: torch.Tensor, guidance: float = 1.0
) -> torch.Tensor:
    """Euler steps of the flow from ``noise`` along ``sigmas`` (1 to 0)."""
    x = noise
    for sigma, next_sigma in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        s = torch.full((len(x),), sigma, device=x.device)
        x = x + (next_sigma - sigma) * guided_velocity(model, x, s, condition, guidance)
    return x


class StudentSampler(DiffusionSampler):
    """The distilled student's generator: Euler steps on its schedule (``model.student_sigmas``), no
    guidance (the teacher's guidance is distilled into it). The family's sampler interface."""

    def __init__(self, model: torch.nn.Module, guidance: float = 1.0) -> None:
        self.model = model
        self.guidance = guidance

    @property
    def sigmas(self) -> torch.Tensor:
        return self.model.get_buffer("student_sigmas")  # a buffer: restored with the model's checkpoint

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def sample(
        self,
        condition: Condition,
        shape: Sequence[int],
        steps: int | None,
        guidance: float,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if steps is not None and steps != self.steps:
            from jevons.framework.errors import UsageError

            raise UsageError(
                f"this distilled student samples in {self.steps} steps on its schedule "
                f"{[round(s, 4) for s in self.sigmas.tolist()]}; steps={steps} was asked for."
            )
        x = self.initial_noise(len(condition), shape, generator, noise)
        samples = sample_on_schedule(self.model, x, condition.to(x.device), self.sigmas, guidance)
        return self.diffusion.finish(samples)
