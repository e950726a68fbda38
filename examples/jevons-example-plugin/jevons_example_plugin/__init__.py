"""An example Jevons plugin: SGD with Nesterov momentum, and a per-step loss log.

Keep a plugin module's top level light: torch and Lightning are imported
inside the hooks, so a mistyped ``train`` command is answered in a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

__version__ = "0.1.0"

PLUGIN_INFO = PluginInfo(description="SGD with Nesterov momentum, and a JSON-lines loss log")


@dataclass
class ExampleConfig:
    momentum: float = 0.9
    """Nesterov momentum of the SGD optimizer."""
    log_name: str = "example_losses.jsonl"
    """File in the run directory that receives one JSON line per training step."""


@hookimpl
def register_config(register):
    register("example", ExampleConfig)


@hookimpl
def configure(config):
    if not 0.0 <= config.example.momentum < 1.0:
        raise UsageError(f"example.momentum={config.example.momentum} must be in [0, 1).")


@hookimpl
def make_optimizer(model, config):
    import torch

    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.optimizer.lr,
        momentum=config.example.momentum,
        nesterov=True,
    )


@hookimpl
def register_callbacks(register, config):
    from jevons_example_plugin.loss_log import LossLog

    register(LossLog(config.example.log_name))
