"""What ``step_distillation`` did in a run: the student's steps and schedule, and what the collapse guard saw
(``plugin_figures.step_distillation``)."""

from __future__ import annotations

import pytorch_lightning as pl

from jevons.framework.attribution import Figure
from jevons.plugins.step_distillation.guard import CollapseGuard


class DistillationReport(pl.Callback):
    """The figures of the run's :class:`CollapseGuard`, which measures the student at every validation."""

    def __init__(self, guard: CollapseGuard) -> None:
        super().__init__()
        self.guard = guard

    def report(self) -> dict[str, Figure]:
        guard = self.guard
        if not guard.steps:
            return {"collapse_guard": "did not run (collapse_guard=off, or no validation)"}
        figures: dict[str, Figure] = {
            "student_steps": guard.steps,
            "schedule": guard.schedule,
            "collapse_warnings": guard.warnings,
        }
        if guard.diversity_ratio is not None:
            figures["diversity_ratio_vs_teacher"] = round(guard.diversity_ratio, 4)
        return figures
