"""An example Jevons plugin: SGD with Nesterov momentum, and a per-step loss log.

This module is the plugin's contract, as in every built-in plugin: its
``PLUGIN_INFO``, its config section and its hooks, annotated with the hooks'
types; the callback it registers is in ``loss_log.py`` (a plugin that reports
figures in the run summary keeps that callback in ``report.py``).

Keep a plugin module's top level light: torch and Lightning are imported
inside the hooks (and for the type checker only, under ``TYPE_CHECKING``), so
a mistyped ``train`` command is answered in a second.
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
    import torch

    from jevons.framework.optim import Optimization

__version__ = "0.1.0"


@dataclass
class ExampleConfig:
    momentum: float = 0.9
    """Nesterov momentum of the SGD optimizer."""
    log_name: str = "example_losses.jsonl"
    """File in the run directory that receives one JSON line per training step."""


PLUGIN_INFO = PluginInfo(description="SGD with Nesterov momentum, and a JSON-lines loss log", config=ExampleConfig)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "example", ExampleConfig)
    if not 0.0 <= cfg.momentum < 1.0:
        raise UsageError(f"example.momentum={cfg.momentum} must be in [0, 1).")


@hookimpl
def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer | Optimization | None:
    import torch

    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.optimizer.lr,
        momentum=section(config, "example", ExampleConfig).momentum,
        nesterov=True,
    )


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons_example_plugin.loss_log import LossLog

    register(LossLog(section(config, "example", ExampleConfig).log_name))
