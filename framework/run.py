"""The lifecycle of ``train recipe=NAME a.b=c ...`` (DESIGN.md), start to end.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import Config
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
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.module import JevonsModule
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
        config_yaml = rundir.config_yaml(config)
        module = JevonsModule(
            built.model, built.objective, built.optimization, built.generator,
            nonfinite=config.trainer.nonfinite, max_consecutive_nonfinite=config.trainer.max_consecutive_nonfinite,
        )
        module.datasets = built.datasets
        trainer, ours = make_trainer(config, family, built, run_dir, config_yaml, _step_or_none(resume_from))
        loaders = {
            stage: make_dataloader(built.datasets[stage], built.batch_samplers[stage], config.data.num_workers)
            for stage in ("train", "val")
        }
        if resume_from is not None:
            print(f"jevons: resuming from {resume_from}", flush=True)
        trainer.fit(module, loaders["train"], loaders["val"], ckpt_path=str(resume_from) if resume_from else None)
        train_loss = _metric(trainer, "train/loss")  # validate() below replaces the callback metrics
        if validation_due(trainer, ours, config):
            trainer.validate(module, loaders["val"], verbose=False)

        summary = {
            "recipe": config.recipe,
            "family": config.family,
            "plugins": ", ".join(config.plugins) or "none",
            "steps": trainer.global_step,
            "resumed_from_step": _step_or_none(resume_from),
            "stopped": ours.preemption.stopped or "no",
            "time_s": round(time.perf_counter() - started, 2),
            "train_loss": train_loss,
            "val_loss": ours.evaluation.metrics.get("val/loss"),
            f"{ours.throughput.unit}_per_s": round(ours.throughput.mean, 1),
            "nonfinite_skipped": len(module.skipped_steps),
            "data_lost": _data_losses(built.datasets, module.data_lost),
            "metrics": {k: v for k, v in ours.evaluation.metrics.items() if k != "val/loss"},
            "artifacts": {
                "run_dir": str(run_dir),
                "metrics": str(run_dir / "metrics.csv"),
                "checkpoint": str(ours.checkpoint.root / f"step_{ours.checkpoint.last_saved_step:08d}")
                if ours.checkpoint.last_saved_step >= 0
                else "none",
                "samples": ", ".join(str(p) for p in ours.evaluation.artifacts) or "none",
            },
        }
        if distributed.is_rank_zero():
            rundir.write_summary(run_dir, summary)
            print(rundir.format_summary(summary), flush=True)
    return RunResult(run_dir, summary)


def _data_losses(datasets: dict[str, Any], lost_while_reading: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per split: samples lost at the shard scan and while reading, with the first few named."""
    report: dict[str, Any] = {}
    for split, dataset in datasets.items():
        losses = [*getattr(dataset, "lost", []), *lost_while_reading.get(split, {}).values()]
        if losses:
            reasons: dict[str, int] = {}
            for loss in losses:
                reason = loss.reason.split(":")[0].split(" (")[0]
                reasons[reason] = reasons.get(reason, 0) + 1
            report[split] = {"lost": len(losses), **reasons, "first": [str(loss) for loss in losses[:5]]}
    return report or "none"


def _metric(trainer: Any, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None


def _step_or_none(path: Path | None) -> int | None:
    from jevons.framework.checkpoint import step_of

    return step_of(path) if path is not None else None
