"""``lowres_cascade``: one diffusion model that generates at low resolution and refines stage by stage.

Seed: "LowDiff: Efficient Diffusion Sampling with Low-Resolution Condition"
— a *unified* model (one set of weights) produces increasingly higher
resolutions, each stage conditioned on the previous stage's output; most
sampling steps run where they are cheap, at low resolution (over 50% more
throughput at comparable quality). No reference code was released; this is
our reading.

The cascade is data (``lowres_cascade.stages``), e.g. ``[{res: 8, steps: 20},
{res: 16, steps: 6}]``:

* **Training.** Each sample draws a stage ``k``. Its target is the clip at
  ``res_k``; for ``k > 0`` the condition is the *same* clip downsampled to
  ``res_{k-1}`` and upsampled back to ``res_k`` (bilinear), with Gaussian
  noise augmentation of random strength (up to ``condition_noise``) so the
  model learns to refine imperfect low-resolution outputs; for ``k = 0`` the
  condition is zeros. Rectified flow as the family's default objective.
* **How the condition enters the model.** As extra input channels: the
  diffusers transformer's patch embedding is widened from ``C`` to ``2C``
  input channels (the new channels start at zero, so the widened model
  computes exactly what it computed before), and its input is ``[x_t,
  condition]``. The stage enters as one learned token per stage appended to
  the conditioning tokens (``encoder_hidden_states``). Frames are kept:
  videos cascade in space only.
* **Sampling.** ``steps_k`` Euler steps at each stage from noise, each stage
  conditioned on the previous stage's output (upsampled), classifier-free
  guidance as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

PLUGIN_INFO = PluginInfo(families=("diffusion",), description="LowDiff: one model refining low resolution to high")


@dataclass
class Stage:
    res: int
    """Pixels per side at this stage."""
    steps: int = 10
    """Sampling steps at this stage."""


@dataclass
class LowresCascadeConfig:
    stages: list[Stage] = field(default_factory=lambda: [Stage(res=8, steps=20), Stage(res=16, steps=6)])
    """Increasing resolutions; the last must equal data.resolution."""
    stage_weights: list[float] = field(default_factory=list)
    """Training probability per stage; empty means equal."""
    condition_noise: float = 0.2
    """Largest std of the Gaussian noise added to the low-resolution condition while training."""
    sample_condition_noise: float = 0.05
    """Noise added to the previous stage's output before it conditions the next (as in training)."""


@hookimpl
def register_config(register):
    register("lowres_cascade", LowresCascadeConfig)


@hookimpl
def configure(config):
    cfg: LowresCascadeConfig = config.lowres_cascade
    resolutions = [stage.res for stage in cfg.stages]
    if len(resolutions) < 2 or resolutions != sorted(set(resolutions)):
        raise UsageError(f"lowres_cascade.stages resolutions {resolutions} must be at least two, increasing.")
    if resolutions[-1] != config.data.resolution:
        raise UsageError(
            f"the last lowres_cascade stage ({resolutions[-1]} px) must equal data.resolution={config.data.resolution}."
        )
    patch = config.model.patch_size[1]
    if any(r % patch for r in resolutions):
        raise UsageError(
            f"every stage resolution {resolutions} must be a multiple of model.patch_size={config.model.patch_size}."
        )
    if cfg.stage_weights and len(cfg.stage_weights) != len(resolutions):
        raise UsageError(
            f"lowres_cascade.stage_weights has {len(cfg.stage_weights)} entries for {len(resolutions)} stages."
        )
    if any(stage.steps < 1 for stage in cfg.stages):
        raise UsageError("every lowres_cascade stage needs at least one sampling step.")


@hookimpl
def modify_model(model, config):
    widen_for_condition(model)
    attach_stage_tokens(model, len(config.lowres_cascade.stages))


@hookimpl
def make_objective(model, config):
    from jevons.plugins.lowres_cascade_parts import CascadeObjective

    cfg = config.lowres_cascade
    return CascadeObjective(
        [s.res for s in cfg.stages], cfg.stage_weights, cfg.condition_noise, config.conditioning.dropout
    )


@hookimpl
def register_callbacks(register, config):
    from jevons.plugins.lowres_cascade_parts import CascadeReport

    register(CascadeReport())


@hookimpl
def make_generator(model, config):
    from jevons.plugins.lowres_cascade_parts import CascadeSampler

    cfg = config.lowres_cascade
    return CascadeSampler(
        model,
        [(s.res, s.steps) for s in cfg.stages],
        config.sample.guidance,
        config.sample.shift,
        cfg.sample_condition_noise,
    )


def widen_for_condition(model: Any) -> None:
    """Give the transformer's patch embedding C more input channels, zero-initialised (no change at first)."""
    import torch

    embedding = model.transformer.patch_embedding  # Conv3d(C -> dim)
    channels = embedding.in_channels
    wider = torch.nn.Conv3d(
        2 * channels, embedding.out_channels, embedding.kernel_size, embedding.stride, bias=embedding.bias is not None
    )
    with torch.no_grad():
        wider.weight.zero_()
        wider.weight[:, :channels] = embedding.weight
        if embedding.bias is not None:
            wider.bias.copy_(embedding.bias)
    model.transformer.patch_embedding = wider
    model.transformer.register_to_config(in_channels=2 * channels)


def attach_stage_tokens(model: Any, stages: int) -> None:
    """One learned conditioning token per stage, next to the class tokens."""
    import torch

    width = model.conditioner.table.embedding_dim // model.conditioner.tokens
    model.stage_tokens = torch.nn.Embedding(stages, width)
    torch.nn.init.normal_(model.stage_tokens.weight, std=0.02)


def stage_resolutions(config: Any) -> Sequence[int]:
    return [stage.res for stage in config.lowres_cascade.stages]
