"""The end-of-run summary: one flat record of what the run did, printed as a table and saved as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jevons.framework.attribution import collect
from jevons.framework.checkpoint_dirs import checkpoint_name, step_of
from jevons.framework.config.schema import Config


def run_summary(
    config: Config,
    trainer: Any,
    ours: Any,
    module: Any,
    datasets: dict[str, Any],
    run_dir: Path,
    resume_from: Path | None,
    train_loss: float | None,
    seconds: float,
) -> dict[str, Any]:
    checkpoint = ours.checkpoint
    return {
        "recipe": config.recipe,
        "family": config.family,
        "plugins": ", ".join(config.plugins) or "none",
        "steps": trainer.global_step,
        "resumed_from_step": step_of(resume_from) if resume_from is not None else None,
        "stopped": ours.preemption.stopped or "no",
        "time_s": round(seconds, 2),
        "train_loss": train_loss,
        "val_loss": ours.evaluation.metrics.get("val/loss"),
        f"{ours.throughput.unit}_per_s": round(ours.throughput.mean, 1),
        "mfu": _rounded(ours.throughput.mfu),
        "peak_matmul_tflops": _rounded(ours.throughput.peak_flops_per_s and ours.throughput.peak_flops_per_s / 1e12),
        "nonfinite_skipped": len(module.skipped_steps),
        "data_lost": data_losses(datasets, module.data_lost),
        "metrics": {k: v for k, v in ours.evaluation.metrics.items() if k != "val/loss"},
        "train_metrics": {k: round(total / count, 6) for k, (total, count) in module.train_metric_sums.items()},
        "plugin_figures": collect(trainer.callbacks),
        "kernels": chosen_kernels(),
        "artifacts": {
            "run_dir": str(run_dir),
            "metrics": str(run_dir / "metrics.csv"),
            "checkpoint": str(checkpoint.root / checkpoint_name(checkpoint.last_saved_step))
            if checkpoint.last_saved_step >= 0
            else "none",
            "samples": ", ".join(str(p) for p in ours.evaluation.artifacts) or "none",
        },
    }


def _rounded(value: float | None) -> float | None:
    return float(f"{value:.4g}") if value else None


def chosen_kernels() -> dict[str, str] | str:
    """Each dispatched op and shape class this run ran, with the implementation, dtype and why."""
    from jevons.kernels import dispatch

    chosen = {d.key: f"{d.choice} ({d.reason})" for d in dispatch.decisions()}
    return chosen or "none"


def data_losses(datasets: dict[str, Any], lost_while_reading: dict[str, dict[str, Any]]) -> dict[str, Any] | str:
    """Per split: samples lost at the shard scan and while reading, counted by reason, the first few named."""
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
