"""The distillation collapse guard (its figures for the run summary are :mod:`.report`'s).

Distribution matching can collapse — to a few modes, to static or
single-colour output (seen in FastVideo's DMD runs) — while its loss looks
fine. At every validation the guard draws ``per_class`` student samples for
each class or prompt the family's conditioner draws from, from fixed seeds,
and measures their within-class diversity (mean pairwise L2 distance between
samples of the same class), as a ratio to the
teacher's diversity on the same seeds; and it watches ``val/fd`` for a jump
over the best value so far. Either sign warns (``collapse_guard=warn``) or
stops the run with a ``TrainingStopped`` error that says what was seen
(``collapse_guard=stop``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch

from jevons.framework.errors import TrainingStopped
from jevons.plugins.step_distillation.flow import sample_on_schedule, seeded_inputs, shifted_schedule
from jevons.recipes.diffusion.conditioning import Condition

if TYPE_CHECKING:
    from jevons.recipes.diffusion.model import DiffusionModel

GUARD_SEED_OFFSET = 3_000_000_000


def within_class_diversity(samples: torch.Tensor, groups: torch.Tensor) -> float:
    """Mean over classes (or prompts) of the mean pairwise L2 distance between that class's samples."""
    distances = []
    for value in groups.unique():
        group = samples[groups == value].flatten(1).float()
        if len(group) > 1:
            pairwise = torch.cdist(group, group)
            distances.append(pairwise.sum() / (len(group) * (len(group) - 1)))
    return float(torch.stack(distances).mean()) if distances else 0.0


class CollapseGuard(pl.Callback):
    """Warns, or stops the run, when the student's samples collapse; records what it saw for the report."""

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

    def _inputs(self, objective: Any, device: torch.device) -> tuple[torch.Tensor, Condition, torch.Tensor]:
        """``per_class`` seeded inputs for each class or prompt the conditioner draws from, and their groups."""
        conditioner = objective.conditioner
        seeds = GUARD_SEED_OFFSET + torch.arange(conditioner.num_groups * self.per_class * 4)
        noise, condition = seeded_inputs(seeds, objective.shape, conditioner)
        groups = conditioner.group(condition)
        chosen = torch.cat(
            [torch.nonzero(groups == g).squeeze(1)[: self.per_class] for g in range(conditioner.num_groups)]
        )
        return noise[chosen].to(device), condition[chosen].to(device), groups[chosen]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode == "off" or trainer.sanity_checking:
            return
        from jevons.framework.module import JevonsModule
        from jevons.plugins.step_distillation.objectives import DistillationObjective

        assert isinstance(pl_module, JevonsModule), "Jevons trains a JevonsModule"
        objective, model = pl_module.objective, cast("DiffusionModel", pl_module.model)
        assert isinstance(objective, DistillationObjective), "step_distillation makes the run's objective"
        sigmas = model.get_buffer("student_sigmas")
        device = next(model.parameters()).device
        noise, condition, groups = self._inputs(objective, device)
        with torch.no_grad():
            if self.teacher_diversity is None:
                teacher = sample_on_schedule(
                    objective.teacher,
                    noise,
                    condition,
                    shifted_schedule(objective.teacher_steps, objective.shift),
                    objective.guidance,
                )
                self.teacher_diversity = within_class_diversity(model.finish(teacher), groups)
            student = model.finish(sample_on_schedule(model, noise, condition, sigmas))
        self.steps, self.schedule = len(sigmas) - 1, str([round(s, 4) for s in sigmas.tolist()])
        self.diversity_ratio = within_class_diversity(student, groups) / max(self.teacher_diversity, 1e-8)
        problems = []
        if self.diversity_ratio < self.min_diversity_ratio:
            problems.append(
                f"within-class sample diversity is {self.diversity_ratio:.3f} of the teacher's "
                f"(min_diversity_ratio={self.min_diversity_ratio})"
            )
        logged_fd = trainer.callback_metrics.get("val/fd")
        if logged_fd is not None:
            fd = float(logged_fd)
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
