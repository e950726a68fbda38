"""The lifecycle of ``train recipe=NAME a.b=c ...`` (docs/architecture.md), start to end.

1. load plugins (light)         :class:`~jevons.framework.plugin_manager.PluginManager`
2. compose and validate config  :func:`~jevons.framework.config.compose.compose_config`
3. launch                       :func:`jevons.launch.launch` → in every process:
   :func:`run_training`: process groups, then
4. build, in the documented order (:mod:`jevons.framework.build`), then
5. run directory, ``Trainer.fit``, summary.

Steps 1-2 import no torch, so a mistake is reported in about a second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import Config
from jevons.framework.errors import ModelInputError
from jevons.framework.plugin_manager import PluginManager


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def train(
    overrides: Sequence[str], plugins: Sequence[tuple[str, object]] = (), autoload: bool | None = None
) -> RunResult | None:
    """Compose the config from ``overrides`` and run it with the configured launcher.

    ``plugins`` adds ``(name, plugin)`` pairs as if they were installed (tests,
    notebooks). Returns this process' result, or None when the run was
    submitted elsewhere (Slurm).
    """
    manager = PluginManager.load(plugins, autoload=autoload)
    config = compose_config(manager, overrides)
    from jevons.launch import launch

    return launch(manager, config, overrides)


def run_training(manager: PluginManager, config: Config) -> RunResult:
    """Steps 3-5 inside one process of the run."""
    import torch

    from jevons.framework import distributed, rundir
    from jevons.framework.build import build
    from jevons.framework.data.cache import data_root
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.module import JevonsModule
    from jevons.framework.summary import run_summary
    from jevons.framework.trainer import make_trainer, quiet_libraries, validation_due
    from jevons.kernels import dispatch

    quiet_libraries()
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    family = manager.family(config.family)
    started = time.perf_counter()
    with distributed.initialized(config.parallel):
        distributed.seed_processes(config.seed)
        dispatch.force(config.kernels)
        built = build(manager, family, config)
        distributed.seed_after_build(config.seed)

        run_dir = rundir.choose_run_dir(config)
        resume_from = rundir.resume_path(config, run_dir)
        if distributed.is_rank_zero():
            rundir.write_run_files(run_dir, config, {name: manager.versions[name] for name in manager.names()})
        dispatch.use_files(
            data_root(config.data.root) / "kernels.json", run_dir / "kernels.json", resume=resume_from is not None
        )
        config_yaml = rundir.config_yaml(config)
        module = JevonsModule(
            built.model,
            built.objective,
            built.optimization,
            built.generator,
            nonfinite=config.trainer.nonfinite,
            max_consecutive_nonfinite=config.trainer.max_consecutive_nonfinite,
        )
        module.datasets = built.datasets
        trainer, ours = make_trainer(config, family, built, run_dir, config_yaml, _step_or_none(resume_from))
        loaders = {
            stage: make_dataloader(
                built.datasets[stage], built.batch_samplers[stage], config.data.num_workers, config.seed
            )
            for stage in ("train", "val")
        }
        if resume_from is not None:
            print(f"jevons: resuming from {resume_from}", flush=True)
        try:
            trainer.fit(module, loaders["train"], loaders["val"], ckpt_path=str(resume_from) if resume_from else None)
        except ModelInputError as error:  # one message naming the recipe, not a traceback per rank
            raise ModelInputError(f"recipe {config.recipe}: {error}") from None
        metric = trainer.callback_metrics.get("train/loss")  # validate() below replaces the callback metrics
        train_loss = float(metric) if metric is not None else None
        if validation_due(trainer, ours, config):
            trainer.validate(module, loaders["val"], verbose=False)

        summary = run_summary(
            config,
            trainer,
            ours,
            module,
            built.datasets,
            run_dir,
            resume_from,
            train_loss,
            time.perf_counter() - started,
        )
        if distributed.is_rank_zero():
            rundir.record_kernels(run_dir, summary["kernels"])
            rundir.write_summary(run_dir, summary)
            print(rundir.format_summary(summary), flush=True)
        dispatch.use_files(None, None, resume=False)
    return RunResult(run_dir, summary)


def _step_or_none(path: Path | None) -> int | None:
    from jevons.framework.checkpoint_dirs import step_of

    return step_of(path) if path is not None else None
