"""Sampling with a diffusers flow scheduler and classifier-free guidance.

The scheduler owns the timestep schedule (``shift`` bends it towards high
noise, as Wan and SD3 do for larger images) and the update: diffusers'
``FlowMatchEulerDiscreteScheduler`` (Euler, ``x <- x + (sigma_next - sigma) * v``)
by default, or the ``UniPCMultistepScheduler`` with flow sigmas that released
Wan folders ship (its ``flow_shift`` is ``sample.shift``). The sampler runs
the model on the conditional and unconditional inputs in one batch and mixes
them with the guidance scale (Ho & Salimans, 2022); the loop is
``WanPipeline``'s, so an exported pipeline samples what Jevons samples.

:class:`DiffusionSampler` is the family's sampler interface, and
:func:`classifier_free_guidance` its guidance; the plugins' samplers (the
distilled student, the low-resolution cascade) build on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from jevons.framework.errors import UsageError
from jevons.recipes.diffusion.conditioning import Condition, Conditioner

if TYPE_CHECKING:
    from jevons.recipes.diffusion.model import DiffusionModel

SCHEDULERS = {"flow_match_euler": "FlowMatchEulerDiscreteScheduler", "unipc": "UniPCMultistepScheduler"}
"""``sample.scheduler`` names and the diffusers classes they are."""


def conditioner_of(model: torch.nn.Module) -> Conditioner:
    conditioner = model.get_submodule("conditioner")
    if not isinstance(conditioner, Conditioner):
        raise TypeError(f"model.conditioner is a {type(conditioner).__name__}, not the family's Conditioner")
    return conditioner


def classifier_free_guidance(
    model: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    condition: Condition,
    guidance: float,
    conditioner: Conditioner | None = None,
) -> torch.Tensor:
    """``model(*inputs, condition)`` guided (Ho & Salimans, 2022): the conditional and the unconditional
    prediction in one batched call, mixed by ``guidance``. The unconditional input is ``conditioner``'s,
    by default the model's own (give it when ``model`` is a function of the model)."""
    if conditioner is None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError("classifier_free_guidance of a function needs the model's conditioner")
        conditioner = conditioner_of(model)
    device = inputs[0].device
    unconditional = conditioner.unconditional(len(condition)).to(device)
    both = model(*(torch.cat([x, x]) for x in inputs), Condition.cat([condition.to(device), unconditional]))
    conditional, free = both.chunk(2)
    return free + guidance * (conditional - free)


def guided_velocity(
    model: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, condition: Condition, guidance: float
) -> torch.Tensor:
    """Classifier-free guided velocity of the family's model; at ``guidance == 1`` the conditional alone."""
    if guidance == 1.0:
        return model(x, sigma, condition)
    return classifier_free_guidance(model, (x, sigma), condition, guidance)


def make_scheduler(name: str, shift: float, folder_config: dict[str, Any] | None = None) -> Any:
    """The diffusers scheduler ``sample.scheduler`` names, at ``shift``; a pipeline folder's config of the
    same class supplies the rest of its settings (UniPC's solver order...). Refuses what does not
    sample a flow."""
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
    from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

    if name not in SCHEDULERS:
        raise UsageError(f"sample.scheduler={name} is not one of {', '.join(SCHEDULERS)}.")
    base = dict(folder_config or {})
    if base.get("_class_name") != SCHEDULERS[name]:
        base = {}
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    if name == "unipc":
        if base and (not base.get("use_flow_sigmas") or base.get("prediction_type") != "flow_prediction"):
            raise UsageError(
                "the pipeline's UniPCMultistepScheduler does not sample a flow (it needs use_flow_sigmas=true and "
                "prediction_type=flow_prediction): set sample.scheduler=flow_match_euler."
            )
        base.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
        base.setdefault("num_train_timesteps", 1000)
        return UniPCMultistepScheduler.from_config(base)
    base.update(shift=shift)
    base.setdefault("num_train_timesteps", 1000)
    return FlowMatchEulerDiscreteScheduler.from_config(base)


class DiffusionSampler:
    """``sampler(condition, shape, steps=None, guidance=None, seed=0, noise=None, **options)``: samples
    ``(B, *shape)`` for a :class:`~jevons.recipes.diffusion.conditioning.Condition` of ``B`` samples
    (pixels in [-1, 1], or latents), the noise drawn from one generator seeded by ``seed`` unless
    ``noise`` is given; ``guidance`` defaults to the sampler's. Subclasses hold ``model`` and ``guidance``
    and sample in :meth:`sample`."""

    model: torch.nn.Module
    guidance: float

    @property
    def diffusion(self) -> DiffusionModel:
        """``model``, typed as the family's model."""
        return cast("DiffusionModel", self.model)

    @torch.no_grad()
    def __call__(
        self,
        condition: Condition,
        shape: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        **options: Any,
    ) -> torch.Tensor:
        guidance = self.guidance if guidance is None else guidance
        return self.sample(condition, shape, steps, guidance, torch.Generator().manual_seed(seed), **options)

    def sample(
        self,
        condition: Condition,
        shape: Sequence[int],
        steps: int | None,
        guidance: float,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def initial_noise(
        self, count: int, shape: Sequence[int], generator: torch.Generator, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(count, *shape)`` standard normal noise from ``generator`` (WanPipeline's ``randn_tensor`` on
        CPU draws the same), or the given ``noise``."""
        device = next(self.model.parameters()).device
        if noise is not None:
            return noise.to(device, torch.float32)
        return torch.randn((count, *shape), generator=generator).to(device)


class FlowSampler(DiffusionSampler):
    """The scheduler's steps on its timesteps (``steps`` defaults to the sampler's)."""

    def __init__(
        self,
        model: torch.nn.Module,
        steps: int = 20,
        guidance: float = 2.0,
        shift: float = 1.0,
        scheduler: str = "flow_match_euler",
        folder_config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.steps = steps
        self.guidance = guidance
        self.shift = shift
        self.scheduler = scheduler
        self.folder_config = folder_config

    def make_scheduler(self) -> Any:
        return make_scheduler(self.scheduler, self.shift, self.folder_config)

    def sample(
        self,
        condition: Condition,
        shape: Sequence[int],
        steps: int | None,
        guidance: float,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device = next(self.model.parameters()).device
        scheduler = self.make_scheduler()
        scheduler.set_timesteps(steps or self.steps, device=device)
        scheduler.set_begin_index(0)
        x = self.initial_noise(len(condition), shape, generator, noise)
        condition = condition.to(device)
        for t in scheduler.timesteps:
            sigma = (t / 1000.0).expand(len(x)).to(device)
            x = scheduler.step(guided_velocity(self.model, x, sigma, condition, guidance), t, x).prev_sample
        return self.diffusion.finish(x)
