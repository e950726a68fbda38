"""How a run is started: in-process, N processes on one machine, or through Slurm.

``LAUNCHER_SCHEMAS`` maps each ``launcher=NAME`` to the schema of its config
section; it is read while the config is composed, so this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from jevons.framework.config.schema import LauncherConfig
from jevons.launch.slurm import SlurmLauncherConfig

if TYPE_CHECKING:
    from jevons.framework.config.schema import Config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.framework.run import RunResult

LAUNCHER_SCHEMAS: dict[str, type] = {"local": LauncherConfig, "slurm": SlurmLauncherConfig}


def launch(manager: PluginManager, config: Config, overrides: Sequence[str]) -> RunResult | None:
    """Start the run the way ``config.launcher`` says; ``overrides`` recompose it in child processes."""
    if config.launcher.name == "slurm":
        from jevons.launch.slurm import launch_slurm

        return launch_slurm(manager, config, overrides)
    from jevons.launch.local import launch_local

    return launch_local(manager, config, overrides)
