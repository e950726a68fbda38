"""The cascade's model surgery, objective and sampler (see :mod:`jevons.plugins.lowres_cascade` for the method).

Tensors are videos ``(B, C, F, H, W)``; images have ``F = 1``. Resizing is
spatial only: frames are kept.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.recipes.diffusion.conditioning import Condition
from jevons.recipes.diffusion.generate import DiffusionSampler, classifier_free_guidance, conditioner_of
from jevons.recipes.diffusion.objective import add_noise

if TYPE_CHECKING:
    from jevons.recipes.diffusion.model import DiffusionModel


def widen_for_condition(model: Any) -> None:
    """Give the transformer's patch embedding C more input channels, zero-initialised (no change at first)."""
    embedding = model.transformer.patch_embedding  # Conv3d(C -> dim)
    channels = embedding.in_channels
    wider = torch.nn.Conv3d(
        2 * channels, embedding.out_channels, embedding.kernel_size, embedding.stride, bias=embedding.bias is not None
    )
    with torch.no_grad():
        wider.weight.zero_()
        wider.weight[:, :channels] = embedding.weight
        if embedding.bias is not None and wider.bias is not None:
            wider.bias.copy_(embedding.bias)
    model.transformer.patch_embedding = wider
    model.transformer.register_to_config(in_channels=2 * channels)


def attach_stage_tokens(model: Any, stages: int) -> None:
    """One learned conditioning token per stage, next to the condition's tokens."""
    width = model.transformer.config["text_dim"]
    model.stage_tokens = torch.nn.Embedding(stages, width)
    torch.nn.init.normal_(model.stage_tokens.weight, std=0.02)


def stage_tokens(model: torch.nn.Module) -> torch.nn.Embedding:
    """The stage tokens :func:`attach_stage_tokens` gave the model."""
    tokens = model.get_submodule("stage_tokens")
    if not isinstance(tokens, torch.nn.Embedding):
        raise TypeError(f"model.stage_tokens is a {type(tokens).__name__}, expected the cascade's nn.Embedding")
    return tokens


def resize(videos: torch.Tensor, size: int) -> torch.Tensor:
    """Spatial bilinear resize of ``(B, C, F, H, W)`` to ``size x size`` (antialiased when shrinking)."""
    batch, channels, frames, height, width = videos.shape
    if height == size and width == size:
        return videos
    flat = videos.transpose(1, 2).reshape(batch * frames, channels, height, width)
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=size < height)
    return out.reshape(batch, frames, channels, size, size).transpose(1, 2)


def low_resolution_condition(clean: torch.Tensor, stage: int, resolutions: Sequence[int]) -> torch.Tensor:
    """The stage's condition from the sample itself: down to the previous stage's size, then up again.
    Nothing finer than ``resolutions[stage - 1]`` survives, so the target cannot leak through it."""
    target = resolutions[stage]
    if stage == 0:
        return torch.zeros_like(resize(clean, target))
    return resize(resize(clean, resolutions[stage - 1]), target)


def velocity(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    low_resolution: torch.Tensor,
    sigma: torch.Tensor,
    condition: Condition,
    stage: int,
) -> torch.Tensor:
    """The cascade model's velocity: the low resolution as extra input channels, the stage as an extra token."""
    tokens = conditioner_of(model)(condition)  # (B, L, D)
    stage_token = stage_tokens(model).weight[stage].expand(len(condition), 1, -1).to(tokens.dtype)  # (B, 1, D)
    hidden = torch.cat([tokens, stage_token], dim=1)
    transformer = model.get_submodule("transformer")
    return transformer(torch.cat([noisy, low_resolution], dim=1), sigma * 1000.0, hidden, return_dict=False)[0]


class CascadeObjective(Objective):
    """Rectified flow at a random stage per sample, conditioned on the sample's own lower resolution."""

    weights: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self, resolutions: Sequence[int], weights: Sequence[float], condition_noise: float, condition_dropout: float
    ) -> None:
        super().__init__()
        self.resolutions = list(resolutions)
        self.register_buffer("weights", torch.tensor(list(weights) or [1.0] * len(resolutions)), persistent=False)
        self.condition_noise = condition_noise
        self.condition_dropout = condition_dropout

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        conditioner = conditioner_of(model)
        clean = cast("DiffusionModel", model).clean(batch)  # full resolution (B, C, F, H, W): pixels or latents
        condition = conditioner.from_batch(batch)
        count = clean.shape[0]
        stages = torch.multinomial(self.weights, count, replacement=True)
        if self.training and self.condition_dropout > 0:
            dropped = torch.rand(count) < self.condition_dropout
            condition = conditioner.drop(condition, dropped)
        total = clean.new_zeros(())
        metrics = {}
        for stage in range(len(self.resolutions)):
            chosen = (stages == stage).nonzero().flatten()
            if len(chosen) == 0:
                continue
            target = resize(clean[chosen], self.resolutions[stage])
            low = low_resolution_condition(clean[chosen], stage, self.resolutions)
            if stage > 0:
                strength = torch.rand(len(chosen)).view(-1, 1, 1, 1, 1) * self.condition_noise
                low = low + strength * torch.randn_like(low)
            sigma = torch.sigmoid(torch.randn(len(chosen)))
            noise = torch.randn_like(target)
            predicted = velocity(model, add_noise(target, noise, sigma), low, sigma, condition[chosen], stage)
            per_sample = (predicted.float() - (noise - target).float()).pow(2).flatten(1).mean(dim=1)  # (n,)
            total = total + per_sample.sum()
            metrics[f"loss_stage{stage}"] = per_sample.mean().detach()
        return ObjectiveOutput(loss=total / count, weight=count, metrics=metrics)


class CascadeSampler(DiffusionSampler):
    """``sampler(condition, shape)``: stage by stage, each conditioned on the last, the final at ``shape``."""

    def __init__(
        self,
        model: torch.nn.Module,
        stages: Sequence[tuple[int, int]],
        guidance: float,
        shift: float,
        condition_noise: float,
    ) -> None:
        self.model = model
        self.stages = list(stages)
        self.guidance = guidance
        self.shift = shift
        self.condition_noise = condition_noise
        self.calls: list[SamplingCall] = []  # for the run's report

    def sample(
        self,
        condition: Condition,
        shape: Sequence[int],
        steps: int | None,
        guidance: float,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
        stage_steps: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``shape`` is the final ``(C, F, H, W)``; ``stage_steps`` overrides the steps per stage, and
        ``steps`` the first (low-resolution) stage's alone."""
        # From its module: the package's lazy top level shows mypy a placeholder class.
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

        if noise is not None:
            raise ValueError("the cascade draws each stage's noise at that stage's size; give a seed, not noise=")
        plan = list(stage_steps) if stage_steps else [s for _, s in self.stages]
        if steps is not None:
            plan[0] = steps
        started = time.perf_counter()
        channels, frames = shape[0], shape[1]
        previous: torch.Tensor | None = None
        for stage, ((res, _), count) in enumerate(zip(self.stages, plan)):
            x = torch.randn((len(condition), channels, frames, res, res), generator=generator)
            if previous is None:
                low = torch.zeros_like(x)
            else:
                low = resize(previous, res)
                low = low + self.condition_noise * torch.randn(low.shape, generator=generator)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
            scheduler.set_timesteps(count)
            predict = functools.partial(velocity, self.model, stage=stage)  # predict(noisy, low, sigma, condition)
            for t in scheduler.timesteps:
                sigma = (t / 1000.0).expand(len(condition))
                guided = classifier_free_guidance(
                    predict, (x, low, sigma), condition, guidance, conditioner_of(self.model)
                )
                x = scheduler.step(guided, t, x).prev_sample
            previous = self.diffusion.finish(x)
        resolutions = [res for res, _ in self.stages]
        self.calls.append(SamplingCall(len(condition), resolutions, plan, time.perf_counter() - started))
        if previous is None:
            raise ValueError("the cascade has no stages to sample")
        return previous


@dataclass(frozen=True)
class SamplingCall:
    """One call of the sampler: ``steps[i]`` network evaluations (conditional and free in one batch) at ``resolutions[i]``."""

    samples: int
    resolutions: list[int]
    steps: list[int]
    seconds: float
