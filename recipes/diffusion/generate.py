"""Sampling with diffusers' ``FlowMatchEulerDiscreteScheduler`` and classifier-free guidance.

The scheduler owns the timestep schedule (``shift`` bends it towards high
noise, as Wan and SD3 do for larger images) and the Euler update
``x <- x + (sigma_next - sigma) * velocity``; this class runs the model on the
conditional and unconditional inputs in one batch and mixes them with the
guidance scale (Ho & Salimans, 2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jevons.recipes.diffusion.data import NO_DIGIT


class FlowSampler:
    """``sampler(labels, shape)``: videos ``(B, C, F, H, W)`` in [-1, 1] for labels ``(B, 2)``."""

    def __init__(self, model: torch.nn.Module, steps: int = 20, guidance: float = 2.0, shift: float = 1.0) -> None:
        self.model = model
        self.steps = steps
        self.guidance = guidance
        self.shift = shift

    @torch.no_grad()
    def __call__(
        self,
        labels: torch.Tensor,
        shape: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

        steps = steps or self.steps
        guidance = self.guidance if guidance is None else guidance
        device = next(self.model.parameters()).device
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
        scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((labels.shape[0], *shape), generator=generator).to(device)
        labels = labels.to(device)
        unconditional = torch.full_like(labels, NO_DIGIT)
        for t in scheduler.timesteps:
            sigma = (t / 1000.0).expand(labels.shape[0]).to(device)
            if guidance == 1.0:
                velocity = self.model(x, sigma, labels)
            else:
                both = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, unconditional]))
                conditional, free = both.chunk(2)
                velocity = free + guidance * (conditional - free)
            x = scheduler.step(velocity, t, x).prev_sample
        return x.clamp(-1.0, 1.0)
