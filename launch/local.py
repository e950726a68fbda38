"""``launcher=local``: the run in this process.

``launcher.nproc > 1`` needs the data-parallel Lightning strategy over
Megatron's groups; until that lands the launcher refuses it rather than start
processes that would train unsynchronised copies.
"""

from __future__ import annotations

from jevons.framework.config.schema import Config
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.framework.run import RunResult, run_training


def launch_local(manager: PluginManager, config: Config) -> RunResult:
    if config.launcher.nproc > 1:
        raise UsageError(
            f"launcher.nproc={config.launcher.nproc}: multi-process runs are not available in this version "
            f"(data-parallel training over Megatron's groups is not implemented yet). Use launcher.nproc=1."
        )
    return run_training(manager, config)
