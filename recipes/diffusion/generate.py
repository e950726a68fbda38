"""Sampling with diffusers' ``FlowMatchEulerDiscreteScheduler`` and classifier-free guidance.

The scheduler owns the timestep schedule (``shift`` bends it towards high
noise, as Wan and SD3 do for larger images) and the Euler update
``x <- x + (sigma_next - sigma) * velocity``; this class runs the model on the
conditional and unconditional inputs in one batch and mixes them with the
guidance scale (Ho & Salimans, 2022).

:class:`DiffusionSampler` is the family's sampler interface, and
:func:`classifier_free_guidance` its guidance; the plugins' samplers (the
distilled student, the low-resolution cascade) build on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from jevons.recipes.diffusion.data import NO_DIGIT


def classifier_free_guidance(
    model: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], labels: torch.Tensor, guidance: float
) -> torch.Tensor:
    """``model(*inputs, labels)`` guided (Ho & Salimans, 2022): the conditional and the unconditional
    (``NO_DIGIT``) prediction in one batched call, mixed by ``guidance``."""
    unconditional = torch.full_like(labels, NO_DIGIT)
    both = model(*(torch.cat([x, x]) for x in inputs), torch.cat([labels, unconditional]))
    conditional, free = both.chunk(2)
    return free + guidance * (conditional - free)


def guided_velocity(
    model: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guided velocity of the family's model; at ``guidance == 1`` the conditional alone."""
    if guidance == 1.0:
        return model(x, sigma, labels)
    return classifier_free_guidance(model, (x, sigma), labels, guidance)


class DiffusionSampler:
    """``sampler(labels, shape, steps=None, guidance=None, seed=0, **options)``: videos ``(B, C, F, H, W)``
    in [-1, 1] for labels ``(B, 2)``, the noise drawn from one generator seeded by ``seed``; ``guidance``
    defaults to the sampler's. Subclasses hold ``model`` and ``guidance`` and sample in :meth:`sample`."""

    model: torch.nn.Module
    guidance: float

    @torch.no_grad()
    def __call__(
        self,
        labels: torch.Tensor,
        shape: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        **options: Any,
    ) -> torch.Tensor:
        guidance = self.guidance if guidance is None else guidance
        return self.sample(labels, shape, steps, guidance, torch.Generator().manual_seed(seed), **options)

    def sample(
        self, labels: torch.Tensor, shape: Sequence[int], steps: int | None, guidance: float, generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError


class FlowSampler(DiffusionSampler):
    """Euler steps of the flow on the scheduler's timesteps (``steps`` defaults to the sampler's)."""

    def __init__(self, model: torch.nn.Module, steps: int = 20, guidance: float = 2.0, shift: float = 1.0) -> None:
        self.model = model
        self.steps = steps
        self.guidance = guidance
        self.shift = shift

    def sample(
        self, labels: torch.Tensor, shape: Sequence[int], steps: int | None, guidance: float, generator: torch.Generator
    ) -> torch.Tensor:
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

        device = next(self.model.parameters()).device
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
        scheduler.set_timesteps(steps or self.steps, device=device)
        x = torch.randn((labels.shape[0], *shape), generator=generator).to(device)
        labels = labels.to(device)
        for t in scheduler.timesteps:
            sigma = (t / 1000.0).expand(labels.shape[0]).to(device)
            x = scheduler.step(guided_velocity(self.model, x, sigma, labels, guidance), t, x).prev_sample
        return x.clamp(-1.0, 1.0)
