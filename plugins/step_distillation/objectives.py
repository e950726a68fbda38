"""Data-free step distillation objectives: TDM (distribution matching) and BOSS (trajectory straightening).

Both read nothing but noise seeds (:class:`NoiseSeeds`): every input is noise
and a condition the family's conditioner draws from the sample's seed (a
digit, or one of the configured prompts). The frozen dense
teacher is held outside the module tree, so it is neither trained nor saved
in checkpoints; the student is the run's model, and its K-step schedule is
the model's ``student_sigmas`` buffer (saved with it, read by the sampler).

Validation (``val/loss``, the same for both methods) is the mean squared
difference between the student's K-step sample and the teacher's
``teacher_steps``-step guided sample from the same noise and condition: the
student's departure from the teacher's sampler, on fixed seeds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.recipes.diffusion.conditioning import Condition, Conditioner
from jevons.recipes.diffusion.generate import conditioner_of

if TYPE_CHECKING:
    from jevons.recipes.diffusion.model import DiffusionModel
from jevons.plugins.step_distillation.flow import (
    NoiseSeeds,
    diffuse,
    guided_velocity,
    renoise,
    sample_on_schedule,
    seeded_inputs,
    x0_and_noise,
)

VAL_SEED_OFFSET = 10**9
POOL_SEED_OFFSET = 4 * 10**9


class DistillationObjective(Objective):
    """What TDM and BOSS share: the frozen teacher, seeded inputs and the validation loss."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        shape: Sequence[int],
        guidance: float,
        teacher_steps: int,
        shift: float,
        seed: int,
        samples_per_epoch: int,
        val_samples: int,
    ) -> None:
        super().__init__()
        teacher.requires_grad_(False).eval()  # a view of a shared base holds nothing: this leaves the student
        self._teacher = [teacher]  # a list: not a submodule, so not trained, not checkpointed
        self.shape = tuple(shape)
        self.guidance = guidance
        self.teacher_steps = teacher_steps
        self.shift = shift
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self._teacher_samples: dict[int, torch.Tensor] = {}

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def dataset(self, split: str) -> NoiseSeeds:
        if split == "train":
            return NoiseSeeds(self.samples_per_epoch, self.seed * 1_000_003)
        return NoiseSeeds(self.val_samples, VAL_SEED_OFFSET + self.seed * 1_000_003)

    @property
    def conditioner(self) -> Conditioner:
        """The family's conditioner (the teacher's): what a seed's condition is drawn by."""
        return conditioner_of(self.teacher)

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, Condition]:
        noise, condition = seeded_inputs(batch["seeds"], self.shape, self.conditioner)
        self.teacher.to(device)
        return noise.to(device), condition.to(device)

    @torch.no_grad()
    def teacher_samples(self, seeds: torch.Tensor, noise: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The teacher's guided ``teacher_steps``-step samples for these seeds (cached: validation seeds repeat)."""
        from jevons.plugins.step_distillation.flow import shifted_schedule

        missing = [i for i, s in enumerate(seeds.tolist()) if s not in self._teacher_samples]
        if missing:
            index = torch.tensor(missing)
            made = sample_on_schedule(
                self.teacher,
                noise[index],
                condition[index],
                shifted_schedule(self.teacher_steps, self.shift),
                self.guidance,
            )
            for i, sample in zip(missing, finish(self.teacher, made)):
                self._teacher_samples[int(seeds[i])] = sample.cpu()
        return torch.stack([self._teacher_samples[int(s)] for s in seeds.tolist()]).to(noise.device)

    def validation(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        noise, condition = self.inputs(batch, batch["seeds"].device)
        with torch.no_grad():
            student = finish(model, sample_on_schedule(model, noise, condition, model.get_buffer("student_sigmas")))
            reference = self.teacher_samples(batch["seeds"], noise, condition)
            loss = F.mse_loss(student.float(), reference.float())
        return ObjectiveOutput(loss=loss, weight=len(noise))

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        if not model.training:
            return self.validation(model, batch)
        return self.training_step(model, batch)

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        raise NotImplementedError


class TDMObjective(DistillationObjective):
    """Trajectory Distribution Matching (Luo et al., 2025, "Learning Few-Step Diffusion Models by
    Trajectory Distribution Matching"), for rectified flow.

    Each step the student samples its own K-step trajectory from noise (no
    gradient) and, per sample, one segment ``[sigma_k, sigma_{k+1}]`` is matched:

    1. From the segment's start ``x_k`` the student predicts ``x0`` and
       ``noise``; re-noised to ``sigma_mid`` drawn in the segment, that is a point
       of the student's trajectory distribution, which is forward-diffused to
       ``sigma_t`` drawn in ``[sigma_mid, sigma_k]``.
    2. The fake-score network (initialised from the teacher, owned and
       optimised here) learns to denoise those points back to the student's
       ``x0``: x0-space MSE weighted by min(SNR, 5) and TDM's importance
       weight for the mixed noise, ``fake_updates`` times per student step.
    3. The student gets the distribution-matching gradient: its ``x0`` is
       regressed onto ``x0 + (x0_teacher^cfg - x0_fake)`` (held fixed), divided
       per sample by the mean absolute difference between its ``x0`` and the
       teacher's (DMD's normalisation, Yin et al., 2024), so the loss scale
       does not depend on how far the student is from the teacher.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        *args: Any,
        fake_lr: float,
        fake_updates: int,
        clip: float = 1.0,
        fake: tuple[torch.nn.Module, list[torch.nn.Parameter]] | None = None,
        **kwargs: Any,
    ) -> None:
        """``fake``: the fake-score network and the parameters its optimizer trains; None: a copy of the
        teacher, all of it trained (with LoRA, :class:`~.shared.SharedBaseView` and its adapter instead)."""
        super().__init__(teacher, *args, **kwargs)
        if fake is None:
            network = copy.deepcopy(teacher).requires_grad_(True).train()
            fake = (network, list(network.parameters()))
        self.fake, self.fake_parameters = fake
        self.fake_updates = fake_updates
        self.clip = clip
        self.fake_optimizer = torch.optim.AdamW(self.fake_parameters, lr=fake_lr, weight_decay=0.0)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"fake_optimizer": self.fake_optimizer.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.fake_optimizer.load_state_dict(state["fake_optimizer"])

    def _segment_points(
        self, model: torch.nn.Module, noise: torch.Tensor, condition: Condition
    ) -> dict[str, torch.Tensor]:
        """Segment starts on the student's own trajectory and the noise levels drawn in each segment."""
        sigmas = model.get_buffer("student_sigmas").to(noise.device)
        batch, steps, device = len(noise), len(sigmas) - 1, noise.device
        with torch.no_grad():
            x, starts = noise, []
            for k in range(steps):
                starts.append(x)
                x = x + (sigmas[k + 1] - sigmas[k]) * model(x, sigmas[k].expand(batch), condition)
        segment = torch.randint(0, steps, (batch,), device=device)
        start = torch.stack(starts)[segment, torch.arange(batch, device=device)]
        sigma_start, sigma_end = sigmas[segment], sigmas[segment + 1]
        sigma_mid = sigma_end + (sigma_start - sigma_end) * torch.rand(batch, device=device)
        sigma_t = (sigma_mid + (sigma_start - sigma_mid) * torch.rand(batch, device=device)).clamp(min=0.02, max=0.98)
        return {"start": start, "sigma_start": sigma_start, "sigma_mid": sigma_mid, "sigma_t": sigma_t}

    def _noised(
        self, x0: torch.Tensor, noise: torch.Tensor, points: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t`` from the student's prediction, and TDM's importance weight for its mixed noise."""
        fresh = torch.randn_like(x0)
        sigma_mid, sigma_t = points["sigma_mid"], points["sigma_t"]
        x_t = diffuse(renoise(x0, noise, sigma_mid), sigma_mid, sigma_t, fresh)
        a = (1.0 - sigma_t) / (1.0 - sigma_mid).clamp(min=1e-6)
        b = (sigma_t**2 - (a * sigma_mid) ** 2).clamp(min=0.0).sqrt()
        mixed = (a * sigma_mid).view(-1, *[1] * (x0.ndim - 1)) * noise + b.view(-1, *[1] * (x0.ndim - 1)) * fresh
        mixed = mixed / sigma_t.view(-1, *[1] * (x0.ndim - 1))
        log_ratio = -0.5 * (mixed.flatten(1).pow(2).mean(1) - fresh.flatten(1).pow(2).mean(1))
        return x_t, log_ratio.clamp(max=5.0).exp()

    def _fake_step(
        self, x0: torch.Tensor, noise: torch.Tensor, condition: Condition, points: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        x_t, importance = self._noised(x0, noise, points)
        sigma_t = points["sigma_t"]
        fake_x0, _ = x0_and_noise(x_t, sigma_t, self.fake(x_t, sigma_t, condition))
        snr = ((1.0 - sigma_t) / sigma_t).pow(2).clamp(max=5.0)
        per_sample = (fake_x0.float() - x0.float()).pow(2).flatten(1).mean(1)
        loss = (per_sample * snr * importance).mean()
        self.fake_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.fake_parameters, self.clip)
        self.fake_optimizer.step()
        self.fake_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        noise_in, condition = self.inputs(batch, next(model.parameters()).device)
        points = self._segment_points(model, noise_in, condition)
        start, sigma_start = points["start"], points["sigma_start"]
        with torch.no_grad():
            x0_fixed, noise_fixed = x0_and_noise(start, sigma_start, model(start, sigma_start, condition))
        fake_losses = [self._fake_step(x0_fixed, noise_fixed, condition, points) for _ in range(self.fake_updates)]

        x0, noise = x0_and_noise(start, sigma_start, model(start, sigma_start, condition))
        sigma_t = points["sigma_t"]
        with torch.no_grad():
            x_t, _ = self._noised(x0.detach(), noise.detach(), points)
            teacher_x0, _ = x0_and_noise(
                x_t, sigma_t, guided_velocity(self.teacher, x_t, sigma_t, condition, self.guidance)
            )
            fake_x0, _ = x0_and_noise(x_t, sigma_t, self.fake(x_t, sigma_t, condition))
            scale = (x0 - teacher_x0).abs().flatten(1).mean(1).clamp(min=1e-4).view(-1, *[1] * (x0.ndim - 1))
            target = x0 + (teacher_x0 - fake_x0)
        loss = ((x0.float() - target.float()).pow(2) / scale).mean()
        metrics = {
            "fake_score_loss": torch.stack(fake_losses).mean(),
            "teacher_fake_gap": (teacher_x0 - fake_x0).pow(2).mean(),
        }
        return ObjectiveOutput(loss=loss, weight=len(noise_in), metrics=metrics)


class BOSSObjective(DistillationObjective):
    """BOSS (Nguyen et al., 2024, "Bellman Optimal Step-size Straightening of Flow-Matching Models"), data-free.

    The schedule (``model.student_sigmas``) is chosen before training by
    :func:`bellman_optimal_schedule` from the teacher's own trajectories. Then
    the student is straightened on it: a pool of ``pool_size`` teacher
    trajectories from seeded noise (``teacher_steps`` guided Euler steps,
    computed once, at the first training step) gives the teacher's points at
    the schedule's sigmas, and for a random step ``k`` per sample the
    student's single Euler step from the teacher's point at ``sigma_k`` must
    land on the teacher's point at ``sigma_{k+1}``: its velocity is regressed
    onto the chord ``(x_{k+1} - x_k) / (sigma_{k+1} - sigma_k)`` (velocity MSE).
    A pool, as BOSS straightens on a finite set of teacher samples: teacher
    trajectories cost ``2 * teacher_steps`` teacher passes each.
    """

    def __init__(self, teacher: torch.nn.Module, *args: Any, pool_size: int, **kwargs: Any) -> None:
        super().__init__(teacher, *args, **kwargs)
        self.pool_size = pool_size
        self._pool: tuple[torch.Tensor, Condition] | None = None

    def pool(self, sigmas: torch.Tensor, device: torch.device, chunk: int = 128) -> tuple[torch.Tensor, Condition]:
        """``(points (P, K + 1, ...), conditions (P))`` of the teacher's trajectories at ``sigmas``."""
        if self._pool is None:
            seeds = POOL_SEED_OFFSET + torch.arange(self.pool_size)
            points, conditions = [], []
            for start in range(0, self.pool_size, chunk):
                noise, condition_part = self.inputs({"seeds": seeds[start : start + chunk]}, device)
                points.append(
                    teacher_points(
                        self.teacher, noise, condition_part, sigmas, self.teacher_steps, self.shift, self.guidance
                    ).transpose(0, 1)
                )
                conditions.append(condition_part)
            self._pool = (torch.cat(points), Condition.cat(conditions))
        return self._pool

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        device = next(model.parameters()).device
        sigmas = model.get_buffer("student_sigmas").to(device)
        pool, pool_conditions = self.pool(sigmas, device)
        chosen = (batch["seeds"] % self.pool_size).to(device)
        points, condition = pool[chosen], pool_conditions[chosen]  # (B, K + 1, ...), B conditions
        batch_size, steps = len(chosen), len(sigmas) - 1
        k = torch.randint(0, steps, (batch_size,), device=device)
        rows = torch.arange(batch_size, device=device)
        start, end = points[rows, k], points[rows, k + 1]
        sigma, next_sigma = sigmas[k], sigmas[k + 1]
        chord = (end - start) / (next_sigma - sigma).view(-1, *[1] * (start.ndim - 1))
        velocity = model(start, sigma, condition)
        return ObjectiveOutput(loss=F.mse_loss(velocity.float(), chord.float()), weight=batch_size)


def finish(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """The family model's last sampling step (pixels clamped, latents kept)."""
    return cast("DiffusionModel", model).finish(samples)


@torch.no_grad()
def teacher_points(
    teacher: Any,
    noise: torch.Tensor,
    condition: Condition,
    sigmas: torch.Tensor,
    teacher_steps: int,
    shift: float,
    guidance: float,
) -> torch.Tensor:
    """The teacher's guided trajectory from ``noise``, read at each of ``sigmas``: ``(len(sigmas), B, ...)``.

    The fine grid is the union of the teacher's ``teacher_steps`` shifted grid and ``sigmas``, so every
    requested sigma is a grid point."""
    from jevons.plugins.step_distillation.flow import shifted_schedule

    fine = torch.unique(torch.cat([shifted_schedule(teacher_steps, shift), sigmas.cpu().float()])).flip(0)
    wanted = {round(float(s), 6): i for i, s in enumerate(sigmas.tolist())}
    found: list[torch.Tensor | None] = [None] * len(sigmas)
    x = noise
    for index, sigma in enumerate(fine.tolist()):
        if round(sigma, 6) in wanted:
            found[wanted[round(sigma, 6)]] = x
        if index + 1 < len(fine):
            s = torch.full((len(x),), sigma, device=x.device)
            x = x + (float(fine[index + 1]) - sigma) * guided_velocity(teacher, x, s, condition, guidance)
    points = [point for point in found if point is not None]
    if len(points) < len(found):
        raise ValueError(f"sigmas {sigmas.tolist()} are not all on the teacher's grid")
    return torch.stack(points)


@torch.no_grad()
def bellman_optimal_schedule(
    teacher: Any,
    noise: torch.Tensor,
    condition: Condition,
    steps: int,
    teacher_steps: int,
    shift: float,
    guidance: float,
) -> tuple[torch.Tensor, float]:
    """BOSS's dynamic programme: the ``steps``-step subsequence of the teacher's ``teacher_steps``-step grid whose
    Euler steps (with the teacher's velocity) stay closest to the teacher's fine trajectory.

    Cost of jumping from grid point ``i`` to ``j`` (``i < j``): the mean squared distance between one Euler
    step from the teacher's point at ``sigma_i`` and the teacher's point at ``sigma_j``, over the calibration
    samples. The cheapest path from sigma 1 to 0 in exactly ``steps`` jumps is found by Bellman's recursion.
    Returns the sigmas and the path's total cost."""
    from jevons.plugins.step_distillation.flow import shifted_schedule

    grid = shifted_schedule(teacher_steps, shift)
    trajectory = teacher_points(teacher, noise, condition, grid, teacher_steps, shift, guidance)  # (N+1, B, ...)
    count = len(grid)
    velocities = torch.stack(
        [
            guided_velocity(
                teacher,
                trajectory[i],
                torch.full((len(noise),), float(grid[i]), device=noise.device),
                condition,
                guidance,
            )
            for i in range(count - 1)
        ]
    )
    cost = torch.full((count, count), math.inf, dtype=torch.float64)
    for i in range(count - 1):
        for j in range(i + 1, count):
            jumped = trajectory[i] + (grid[j] - grid[i]) * velocities[i]
            cost[i, j] = float((jumped - trajectory[j]).pow(2).mean())
    best = torch.full((steps + 1, count), math.inf, dtype=torch.float64)  # best[m, j]: m jumps from 0 to j
    parent = torch.zeros((steps + 1, count), dtype=torch.long)
    best[0, 0] = 0.0
    for m in range(1, steps + 1):
        totals = best[m - 1][:, None] + cost  # (from, to)
        best[m], parent[m] = totals.min(dim=0)
    path = [count - 1]
    for m in range(steps, 0, -1):
        path.append(int(parent[m, path[-1]]))
    return grid[torch.tensor(path[::-1])], float(best[steps, count - 1])
