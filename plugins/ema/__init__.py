"""``ema``: an exponential moving average of the trained weights, used for validation samples.

Every diffusion trainer keeps one (DDPM, Ho et al., 2020; "Analyzing and
Improving the Training Dynamics of Diffusion Models", Karras et al., 2024):
samples from the averaged weights are better than from the last ones. The
average covers what trains (a LoRA run's adapters only) and lives beside each
rank's own shards, so it is correct at every tensor-parallel layout. It is
kept in checkpoints, so a resume continues it exactly. Validation (its loss and
the family's samples) runs on the average, training on the weights.

With ``warmup`` the decay at the ``n``-th update is ``min(decay, (1 + n) / (10 + n))``
(the warm-up of TensorFlow's and diffusers' ``EMAModel``), so early averages are
not dominated by the random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl


@dataclass
class EMAConfig:
    decay: float = 0.999
    """The average's decay per update: its horizon is about ``1 / (1 - decay)`` updates."""
    warmup: bool = True
    """Decay ``min(decay, (1 + n) / (10 + n))`` at the n-th update."""
    every_n_steps: int = 1
    """Update the average every this many optimizer steps."""
    validate: bool = True
    """Run validation (loss and samples) on the average; false: on the trained weights."""


PLUGIN_INFO = PluginInfo(
    description="exponential moving average of the trained weights, for validation samples",
    config=EMAConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "ema", EMAConfig)
    if not 0.0 <= cfg.decay <= 1.0:
        raise UsageError(f"ema.decay={cfg.decay} must be in [0, 1] (0.999 and 0.9999 are common).")
    if cfg.every_n_steps < 1:
        raise UsageError(f"ema.every_n_steps={cfg.every_n_steps} must be a positive integer.")


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.ema.average import ExponentialMovingAverage

    cfg = section(config, "ema", EMAConfig)
    register(ExponentialMovingAverage(cfg.decay, cfg.warmup, cfg.every_n_steps, cfg.validate))
