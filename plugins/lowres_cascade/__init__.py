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
from typing import TYPE_CHECKING, cast

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
    """Increasing resolutions in pixels; the last must equal the generated size. A latent model's stages
    are the VAE's latents of those sizes."""
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


def model_space(config: Config) -> int:
    """Pixels per model-space sample side: the VAE's spatial factor for a latent model, else 1."""
    from jevons.recipes.diffusion.components import vae_folder, vae_geometry
    from jevons.recipes.diffusion.family import DiffusionModelConfig

    vae = vae_folder(section(config, "model", DiffusionModelConfig))
    return vae_geometry(vae)[2] if vae is not None else 1


def stage_sizes(config: Config) -> list[int]:
    """The stages' sides in model space (pixels, or latents: pixels over the VAE's spatial factor)."""
    factor = model_space(config)
    return [stage.res // factor for stage in section(config, "lowres_cascade", LowresCascadeConfig).stages]


@hookimpl
def configure(config: Config) -> None:
    from jevons.recipes.diffusion.components import pixel_size
    from jevons.recipes.diffusion.family import DiffusionConfig, DiffusionModelConfig

    cfg = section(config, "lowres_cascade", LowresCascadeConfig)
    if config.parallel.shard > 1 or config.parallel.ulysses > 1:
        raise UsageError(
            f"lowres_cascade with parallel.shard={config.parallel.shard}, ulysses={config.parallel.ulysses}: the "
            "cascade's stage models are not split yet. Train it with tensor and data parallelism."
        )
    model = section(config, "model", DiffusionModelConfig)
    resolutions = [stage.res for stage in cfg.stages]
    if len(resolutions) < 2 or resolutions != sorted(set(resolutions)):
        raise UsageError(f"lowres_cascade.stages resolutions {resolutions} must be at least two, increasing.")
    _, height, width = pixel_size(cast("DiffusionConfig", config))
    if height != width:
        raise UsageError(
            f"lowres_cascade samples square stages; the generated clips are {width}x{height}: set data.resolution "
            f"(and sample.height=sample.width) to one size."
        )
    if resolutions[-1] != height:
        raise UsageError(
            f"the last lowres_cascade stage ({resolutions[-1]} px) must equal the generated size ({height} px: "
            f"data.resolution, or sample.height)."
        )
    unit = model.patch_size[1] * model_space(config)
    if any(r % unit for r in resolutions):
        raise UsageError(
            f"every stage resolution {resolutions} must be a multiple of {unit} px: model.patch_size={model.patch_size}"
            + (f" of latents {unit // model.patch_size[1]} px a side" if unit != model.patch_size[1] else "")
            + "."
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
    return CascadeObjective(stage_sizes(config), cfg.stage_weights, cfg.condition_noise, conditioning.dropout)


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
        [(size, stage.steps) for size, stage in zip(stage_sizes(config), cfg.stages)],
        sample.guidance,
        sample.resolved_shift(),
        cfg.sample_condition_noise,
    )
