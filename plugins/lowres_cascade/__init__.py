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

The model surgery, objective and sampler are :mod:`jevons.plugins.lowres_cascade.cascade`;
the run's figures :mod:`jevons.plugins.lowres_cascade.report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator


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


PLUGIN_INFO = PluginInfo(
    families=("diffusion",),
    description="LowDiff: one model refining low resolution to high",
    config=LowresCascadeConfig,
)


@hookimpl
def configure(config: Config) -> None:
    from jevons.recipes.diffusion.family import DiffusionDataConfig, DiffusionModelConfig

    cfg = section(config, "lowres_cascade", LowresCascadeConfig)
    data = section(config, "data", DiffusionDataConfig)
    model = section(config, "model", DiffusionModelConfig)
    resolutions = [stage.res for stage in cfg.stages]
    if len(resolutions) < 2 or resolutions != sorted(set(resolutions)):
        raise UsageError(f"lowres_cascade.stages resolutions {resolutions} must be at least two, increasing.")
    if resolutions[-1] != data.resolution:
        raise UsageError(
            f"the last lowres_cascade stage ({resolutions[-1]} px) must equal data.resolution={data.resolution}."
        )
    patch = model.patch_size[1]
    if any(r % patch for r in resolutions):
        raise UsageError(
            f"every stage resolution {resolutions} must be a multiple of model.patch_size={model.patch_size}."
        )
    if cfg.stage_weights and len(cfg.stage_weights) != len(resolutions):
        raise UsageError(
            f"lowres_cascade.stage_weights has {len(cfg.stage_weights)} entries for {len(resolutions)} stages."
        )
    if any(stage.steps < 1 for stage in cfg.stages):
        raise UsageError("every lowres_cascade stage needs at least one sampling step.")


@hookimpl
def modify_model(model: torch.nn.Module, config: Config) -> None:
    from jevons.plugins.lowres_cascade.cascade import attach_stage_tokens, widen_for_condition

    widen_for_condition(model)
    attach_stage_tokens(model, len(section(config, "lowres_cascade", LowresCascadeConfig).stages))


@hookimpl
def make_objective(model: torch.nn.Module, config: Config) -> Objective | None:
    from jevons.plugins.lowres_cascade.cascade import CascadeObjective
    from jevons.recipes.diffusion.family import ConditioningConfig

    cfg = section(config, "lowres_cascade", LowresCascadeConfig)
    conditioning = section(config, "conditioning", ConditioningConfig)
    return CascadeObjective([s.res for s in cfg.stages], cfg.stage_weights, cfg.condition_noise, conditioning.dropout)


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.lowres_cascade.report import CascadeReport

    register(CascadeReport())


@hookimpl
def make_generator(model: torch.nn.Module, config: Config) -> Generator | None:
    from jevons.plugins.lowres_cascade.cascade import CascadeSampler
    from jevons.recipes.diffusion.family import SampleConfig

    cfg = section(config, "lowres_cascade", LowresCascadeConfig)
    sample = section(config, "sample", SampleConfig)
    return CascadeSampler(
        model,
        [(s.res, s.steps) for s in cfg.stages],
        sample.guidance,
        sample.resolved_shift(),
        cfg.sample_condition_noise,
    )
