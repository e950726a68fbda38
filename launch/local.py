"""``launcher=local``: the run in this process, or ``launcher.nproc=N`` processes on this machine.

With ``nproc > 1`` this process becomes a supervisor: it picks the run
directory, starts N copies of the same ``train`` command with torchrun-style
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and ``run.dir`` pinned, splits the cores between them, and
waits. If one process fails the others are stopped, so a crash never leaves a
collective hanging, and the failing rank's exit code is returned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jevons.framework.config.schema import Config
from jevons.framework.plugin_manager import PluginManager
from jevons.framework.run import RunResult, run_training
from jevons.launch.ranks import RankFailed, run_ranks

__all__ = ["RankFailed", "launch_local"]


def launch_local(manager: PluginManager, config: Config, overrides: Sequence[str]) -> RunResult | None:
    if config.launcher.nproc == 1 or "RANK" in os.environ:
        return run_training(manager, config)
    return _supervise(config, overrides)


def _supervise(config: Config, overrides: Sequence[str]) -> RunResult | None:
    import json

    from jevons.framework.rundir import choose_run_dir

    nproc = config.launcher.nproc
    run_dir = choose_run_dir(config).resolve()
    run_ranks([sys.executable, "-m", "jevons.framework.cli.train", *overrides, f"run.dir={run_dir}"], nproc)
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return RunResult(run_dir, summary)
