"""The distillation collapse guard, and the plugin's figures for the run summary.

Distribution matching can collapse — to a few modes, to static or
single-colour output (seen in FastVideo's DMD runs) — while its loss looks
fine. At every validation the guard draws ``per_class`` student samples for
each digit from fixed seeds and measures their within-class diversity (mean
pairwise L2 distance between samples of the same class), as a ratio to the
teacher's diversity on the same seeds; and it watches ``val/fd`` for a jump
over the best value so far. Either sign warns (``collapse_guard=warn``) or
stops the run with a ``TrainingStopped`` error that says what was seen
(``collapse_guard=stop``).
"""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
import torch

from jevons.framework.attribution import Figure
from jevons.framework.errors import TrainingStopped
from jevons.plugins.step_distillation_flow import sample_on_schedule, seeded_inputs, shifted_schedule

GUARD_SEED_OFFSET = 3_000_000_000


def within_class_diversity(samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise L2 distance between that class's samples."""
    distances = []
    for digit in labels[:, 0].unique():
        group = samples[labels[:, 0] == digit].flatten(1).float()
        if len(group) > 1:
            pairwise = torch.cdist(group, group)
            distances.append(pairwise.sum() / (len(group) * (len(group) - 1)))
    return float(torch.stack(distances).mean()) if distances else 0.0


class CollapseGuard(pl.Callback):
    plugin = "step_distillation"

    def __init__(self, mode: str, min_diversity_ratio: float, max_fd_jump: float, per_class: int) -> None:
        super().__init__()
        self.mode = mode
        self.per_class = per_class
        self.min_diversity_ratio = min_diversity_ratio
        self.max_fd_jump = max_fd_jump
        self.teacher_diversity: float | None = None
        self.diversity_ratio: float | None = None
        self.best_fd: float | None = None
        self.warnings = 0
        self.steps = 0
        self.schedule = ""

    def _inputs(self, objective: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = GUARD_SEED_OFFSET + torch.arange(10 * self.per_class * 4)
        noise, labels = seeded_inputs(seeds, objective.shape)
        chosen = torch.cat([torch.nonzero(labels[:, 0] == d).squeeze(1)[: self.per_class] for d in range(10)])
        return noise[chosen].to(device), labels[chosen].to(device)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode == "off" or trainer.sanity_checking:
            return
        objective, model = pl_module.objective, pl_module.model
        device = next(model.parameters()).device
        noise, labels = self._inputs(objective, device)
        with torch.no_grad():
            if self.teacher_diversity is None:
                teacher = sample_on_schedule(
                    objective.teacher,
                    noise,
                    labels,
                    shifted_schedule(objective.teacher_steps, objective.shift),
                    objective.guidance,
                )
                self.teacher_diversity = within_class_diversity(teacher.clamp(-1, 1), labels)
            student = sample_on_schedule(model, noise, labels, model.student_sigmas).clamp(-1, 1)
        self.steps, self.schedule = (
            len(model.student_sigmas) - 1,
            str([round(s, 4) for s in model.student_sigmas.tolist()]),
        )
        self.diversity_ratio = within_class_diversity(student, labels) / max(self.teacher_diversity, 1e-8)
        problems = []
        if self.diversity_ratio < self.min_diversity_ratio:
            problems.append(
                f"within-class sample diversity is {self.diversity_ratio:.3f} of the teacher's "
                f"(min_diversity_ratio={self.min_diversity_ratio})"
            )
        fd = trainer.callback_metrics.get("val/fd")
        if fd is not None:
            fd = float(fd)
            if self.best_fd is not None and fd > self.max_fd_jump * self.best_fd:
                problems.append(
                    f"val/fd jumped to {fd:.4g}, over {self.max_fd_jump}x the best so far ({self.best_fd:.4g})"
                )
            self.best_fd = fd if self.best_fd is None else min(self.best_fd, fd)
        if not problems:
            return
        self.warnings += 1
        message = (
            f"step_distillation: the student looks collapsed at step {trainer.global_step}: "
            + "; ".join(problems)
            + ". Lower optimizer.lr, raise step_distillation.fake_updates, or resume from an "
            "earlier checkpoint."
        )
        if self.mode == "stop":
            raise TrainingStopped(message + " (step_distillation.collapse_guard=stop)")
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def report(self) -> dict[str, Figure]:
        if not self.steps:
            return {"collapse_guard": "did not run (collapse_guard=off, or no validation)"}
        figures: dict[str, Figure] = {
            "student_steps": self.steps,
            "schedule": self.schedule,
            "collapse_warnings": self.warnings,
        }
        if self.diversity_ratio is not None:
            figures["diversity_ratio_vs_teacher"] = round(self.diversity_ratio, 4)
        return figures
