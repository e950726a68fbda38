"""Loading a trained run for inference: the same build, minus data and optimizer, from a checkpoint.

``jevons sample run_dir=...`` and exports use this. The model is built exactly as
training built it (family, then the enabled plugins' module replacements and
``modify_model``, then the objective, which may own networks saved with the
model), so the checkpoint's parameter names match; the generator is the
run's own (a distilled student's few-step sampler, a cascade), through
``make_generator`` or the family default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jevons.framework.config.compose import load_run_config
from jevons.framework.config.schema import Config
from jevons.framework.errors import UsageError
from jevons.framework.family import Family
from jevons.framework.plugin_manager import PluginManager


@dataclass
class LoadedRun:
    config: Config
    family: Family
    model: Any
    generator: Any
    checkpoint: Path
    step: int
    state: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's saved state for this rank besides the weights (loop counters, callbacks' state)."""


def load_run(run_dir: Path, checkpoint: Path | None = None, manager: PluginManager | None = None) -> LoadedRun:
    """Build the run's model and generator and load ``checkpoint`` (default: the newest complete one).

    Call inside :func:`jevons.framework.distributed.initialized` (Megatron layers need the groups).
    """
    from jevons.framework.build import build_model_and_objective
    from jevons.framework.checkpoint import load_checkpoint
    from jevons.framework.checkpoint_dirs import latest_checkpoint, step_of
    from jevons.framework.module import JevonsModule
    from jevons.framework.optim import Optimization
    from jevons.framework.rundir import CHECKPOINTS

    manager = manager or PluginManager.load()
    run_dir = Path(run_dir)
    config = load_run_config(manager, run_dir)
    family = manager.family(config.family)
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / CHECKPOINTS)
    if checkpoint is None:
        raise UsageError(f"{run_dir} has no complete checkpoint to load.")
    from jevons.framework.distributed import seed_processes

    seed_processes(config.seed)  # as training did: a base built from the seed (frozen, not saved) is rebuilt equal
    model, objective, _ = build_model_and_objective(manager, family, config)
    module = JevonsModule(model, objective, Optimization(optimizer=None), None)  # type: ignore[arg-type]
    state = load_checkpoint(checkpoint, module, [])
    model.eval()
    generator = manager.call_first("make_generator", config.plugins, model=model, config=config)
    if generator is None:
        generator = family.default_generator(model, config)
    return LoadedRun(config, family, model, generator, checkpoint, step_of(checkpoint), state)
