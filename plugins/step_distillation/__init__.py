"""``step_distillation``: data-free few-step distillation of a diffusion teacher (TDM, or the BOSS baseline).

Seed: Video-BLADE (Gu et al., 2025): the student learns K-step sampling from
a frozen dense teacher by Trajectory Distribution Matching (Luo et al., 2025)
with no real data, and with its sparse attention on *during* distillation
when ``block_sparse_attention`` is enabled too (BLADE). Neither plugin names
the other: sparse attention replaces the student's attention processors, and
the teacher is loaded here from its own folder with dense attention.

* ``method=tdm`` (:class:`~jevons.plugins.step_distillation.objectives.TDMObjective`): distribution matching on the
  student's own trajectory segments, with a fake-score network the objective
  owns and optimises (``fake_updates`` updates per student step).
* ``method=boss`` (:class:`~jevons.plugins.step_distillation.objectives.BOSSObjective`): the simpler data-free baseline —
  Bellman-optimal K-step schedule from the teacher's trajectories, then the
  student straightened onto the teacher's chords. Chosen over progressive
  distillation because it needs one stage, not log2(50/K) rounds, and it
  learns the schedule the student samples on.

The student samples in K Euler steps on its schedule (``model.student_sigmas``,
saved with the model) without guidance: ``jevons sample`` uses it. Inputs are
noise seeds only (:class:`~jevons.plugins.step_distillation.flow.NoiseSeeds`); the family's dataset is
never built for training. A collapse guard (:mod:`.guard`) checks sample diversity and the Fréchet
distance at every validation (``collapse_guard``); the run's figures are :mod:`.report`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator


@dataclass
class StepDistillationConfig:
    method: Literal["tdm", "boss"] = "tdm"
    teacher: str | None = None
    """The dense teacher: a Jevons diffusion export (``transformer/``, and ``conditioner.safetensors`` for a
    class-conditional one) or a diffusers pipeline folder. Null: ``model.pretrained``, the student's start."""
    steps: int = 4
    """Student sampling steps (K)."""
    teacher_steps: int = 50
    """Steps of the teacher's sampler: BOSS's fine grid and the validation reference."""
    guidance: float | None = None
    """The teacher's classifier-free guidance, distilled into the student; null: ``sample.guidance``."""
    fake_lr: float | None = None
    """TDM: the fake-score network's learning rate; null: ``optimizer.lr``."""
    fake_updates: int = 1
    """TDM: fake-score updates per student update (TDM's demo: 1; DMD2: 5)."""
    samples_per_epoch: int = 1_000_000
    """Noise seeds in the training 'dataset' (an epoch never repeats a seed in practice)."""
    val_samples: int = 64
    """Fixed validation seeds: ``val/loss`` is the MSE of the student's sample to the teacher's."""
    calibration_samples: int = 64
    """BOSS: teacher trajectories the schedule is optimised on."""
    pool_size: int = 1024
    """BOSS: teacher trajectories the student is straightened on (made once, at the first step)."""
    collapse_guard: Literal["warn", "stop", "off"] = "warn"
    """At each validation: warn, or stop the run, when samples collapse (see the next two)."""
    min_diversity_ratio: float = 0.35
    """Collapse when the student's within-class sample diversity falls below this fraction of the teacher's."""
    max_fd_jump: float = 2.0
    """Collapse when ``val/fd`` exceeds this multiple of the best so far."""
    guard_per_class: int = 6
    """Samples per class or prompt the guard draws from student and teacher (the teacher's once)."""


def teacher_folder(config: Config) -> Path:
    from jevons.recipes.diffusion.family import ConditioningConfig, DiffusionModelConfig

    cfg = section(config, "step_distillation", StepDistillationConfig)
    class_table = section(config, "conditioning", ConditioningConfig).kind == "labels"
    folder = cfg.teacher or section(config, "model", DiffusionModelConfig).pretrained
    if not folder:
        raise UsageError(
            "step_distillation needs a dense teacher: set model.pretrained=PATH (the student starts from "
            "it; e.g. benchmarks/teachers/image-16px) or step_distillation.teacher=PATH."
        )
    path = Path(folder).expanduser()
    table = path / "conditioner.safetensors"
    if not (path / "transformer").is_dir() or (class_table and not table.is_file()):
        expected = f"{path / 'transformer'}/" + (f" and {table}" if class_table else "")
        raise UsageError(
            f"step_distillation teacher {path} is not a Jevons diffusion export: expected {expected} "
            f"(written by `jevons export`)."
        )
    return path


PLUGIN_INFO = PluginInfo(
    families=("diffusion",),
    description="Data-free few-step distillation (TDM, BOSS baseline)",
    config=StepDistillationConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "step_distillation", StepDistillationConfig)
    if config.parallel.shard > 1 or config.parallel.ulysses > 1:
        raise UsageError(
            f"step_distillation with parallel.shard={config.parallel.shard}, ulysses={config.parallel.ulysses}: the "
            "teacher and fake score are not split with the student yet. Distil with tensor and data parallelism."
        )
    if cfg.steps < 1 or cfg.teacher_steps < cfg.steps:
        raise UsageError(
            f"step_distillation.steps={cfg.steps} must be at least 1 and at most "
            f"step_distillation.teacher_steps={cfg.teacher_steps}."
        )
    if cfg.fake_updates < 1:
        raise UsageError(f"step_distillation.fake_updates={cfg.fake_updates} must be at least 1.")
    if min(cfg.val_samples, cfg.calibration_samples, cfg.pool_size) < 1:
        raise UsageError("step_distillation.val_samples, calibration_samples and pool_size must be at least 1.")
    if cfg.guard_per_class < 2:
        raise UsageError(
            f"step_distillation.guard_per_class={cfg.guard_per_class} must be at least 2: diversity is "
            f"measured between samples of the same class or prompt."
        )
    if not 0.0 <= cfg.min_diversity_ratio < 1.0 or cfg.max_fd_jump <= 1.0:
        raise UsageError(
            f"step_distillation.min_diversity_ratio={cfg.min_diversity_ratio} must be in [0, 1) and "
            f"max_fd_jump={cfg.max_fd_jump} above 1."
        )
    teacher_folder(config)


@hookimpl
def modify_model(model: torch.nn.Module, config: Config) -> None:
    from jevons.plugins.step_distillation.flow import shifted_schedule
    from jevons.recipes.diffusion.family import SampleConfig

    steps = section(config, "step_distillation", StepDistillationConfig).steps
    model.register_buffer(
        "student_sigmas", shifted_schedule(steps, section(config, "sample", SampleConfig).resolved_shift())
    )


@hookimpl
def make_objective(model: torch.nn.Module, config: Config) -> Objective | None:
    import torch

    from jevons.framework.distributed import is_rank_zero
    from jevons.plugins.step_distillation.flow import seeded_inputs
    from jevons.plugins.step_distillation.objectives import BOSSObjective, TDMObjective, bellman_optimal_schedule
    from jevons.recipes.diffusion.components import sample_shape
    from jevons.recipes.diffusion.family import ConditioningConfig, DiffusionConfig, SampleConfig
    from jevons.recipes.diffusion.generate import conditioner_of
    from jevons.recipes.diffusion.model import DiffusionModel

    cfg = section(config, "step_distillation", StepDistillationConfig)
    sample = section(config, "sample", SampleConfig)
    conditioning = section(config, "conditioning", ConditioningConfig)
    conditioner = conditioner_of(model)
    fake: tuple[torch.nn.Module, list[torch.nn.Parameter]] | None = None
    if _shares_base(model, config):
        from jevons.plugins.step_distillation.shared import FAKE_ADAPTER, SharedBaseView

        teacher: torch.nn.Module = SharedBaseView(model, None)
        if cfg.method == "tdm":
            fake = (SharedBaseView(model, FAKE_ADAPTER), _add_fake_adapter(model, config.seed))
        if is_rank_zero():
            print(
                "step_distillation: teacher and fake score share the student's frozen base (adapters off; "
                "the fake score's own adapter), attention dense",
                flush=True,
            )
    else:
        shared = conditioner if conditioner.kind == "text" else None  # text: frozen, so teacher and student share it
        codec = cast("DiffusionModel", model).codec  # a latent teacher decodes (and is finished) like its student
        teacher = DiffusionModel.from_pretrained(teacher_folder(config), conditioning.tokens, shared, codec)
        _check_architecture(model, teacher, teacher_folder(config))
    shape = sample_shape(cast("DiffusionConfig", config))
    guidance = sample.guidance if cfg.guidance is None else cfg.guidance
    common: dict[str, Any] = {
        "shape": shape,
        "guidance": guidance,
        "teacher_steps": cfg.teacher_steps,
        "shift": sample.resolved_shift(),
        "seed": config.seed,
        "samples_per_epoch": cfg.samples_per_epoch,
        "val_samples": cfg.val_samples,
    }
    if cfg.method == "tdm":
        return TDMObjective(
            teacher,
            fake_lr=cfg.fake_lr or config.optimizer.lr,
            fake_updates=cfg.fake_updates,
            clip=config.trainer.gradient_clip_val or 1.0,
            fake=fake,
            **common,
        )
    noise, condition = seeded_inputs(torch.arange(cfg.calibration_samples) + 2_000_000_000, shape, conditioner)
    sigmas, cost = bellman_optimal_schedule(
        teacher, noise, condition, cfg.steps, cfg.teacher_steps, sample.resolved_shift(), guidance
    )
    model.get_buffer("student_sigmas").copy_(sigmas)
    if is_rank_zero():
        print(
            f"step_distillation: BOSS schedule {[round(s, 4) for s in sigmas.tolist()]} (Euler cost {cost:.4g})",
            flush=True,
        )
    return BOSSObjective(teacher, pool_size=cfg.pool_size, **common)


def _shares_base(model: torch.nn.Module, config: Config) -> bool:
    """LoRA trains the student and its frozen base is the teacher (the student started from it)."""
    from jevons.framework.adapters import adapter_layers
    from jevons.recipes.diffusion.family import DiffusionModelConfig

    pretrained = section(config, "model", DiffusionModelConfig).pretrained
    if not adapter_layers(model) or not pretrained:
        return False
    return Path(pretrained).expanduser().resolve() == teacher_folder(config).resolve()


def _add_fake_adapter(model: torch.nn.Module, seed: int) -> list[torch.nn.Parameter]:
    """A second adapter, the student's rank, alpha and dropout on the student's adapted layers, ``B = 0``:
    the fake score starts as the teacher, as TDM initialises it. Returns its parameters."""
    from jevons.framework.adapters import adapter_layers
    from jevons.framework.optim import mark_objective_owned
    from jevons.plugins.lora.inject import adapter_parameters, add_adapters
    from jevons.plugins.step_distillation.shared import FAKE_ADAPTER

    layers = adapter_layers(model)
    first = layers[0][1]
    dropout = getattr(first.lora_dropout["default"], "p", 0.0)
    add_adapters(
        model, [n for n, _ in layers], first.r["default"], first.lora_alpha["default"], dropout, seed, FAKE_ADAPTER
    )
    parameters = list(adapter_parameters(model, FAKE_ADAPTER).values())
    mark_objective_owned(parameters)  # trained by the objective's fake-score optimizer, not the student's
    return parameters


def _check_architecture(model: torch.nn.Module, teacher: torch.nn.Module, folder: Path) -> None:
    student_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    teacher_shapes = {name: tuple(p.shape) for name, p in teacher.named_parameters()}
    if student_shapes != teacher_shapes:
        different = sorted(set(student_shapes.items()) ^ set(teacher_shapes.items()))[:3]
        raise UsageError(
            f"the step_distillation teacher {folder} is not the student's architecture "
            f"(first differences: {different}); the student is initialised from the teacher, so the "
            f"model section must match the teacher's."
        )


@hookimpl
def make_generator(model: torch.nn.Module, config: Config) -> Generator | None:
    from jevons.plugins.step_distillation.flow import StudentSampler

    return StudentSampler(model)


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.step_distillation.guard import CollapseGuard
    from jevons.plugins.step_distillation.report import DistillationReport

    cfg = section(config, "step_distillation", StepDistillationConfig)
    guard = CollapseGuard(cfg.collapse_guard, cfg.min_diversity_ratio, cfg.max_fd_jump, cfg.guard_per_class)
    register(guard)
    register(DistillationReport(guard))
