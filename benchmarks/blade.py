"""BLADE on 4,096-token clips: sparse attention and step distillation, alone and together, against the dense 50-step teacher.

The teacher is the committed ``benchmarks/teachers/video-32px-16f`` (moving
digits, 32 px x 16 frames). Four arms, measured in one process:

* ``teacher 50``: the dense teacher, 50 guided Euler steps (100 passes);
* ``sparse 50``: the teacher fine-tuned with adaptive block-sparse attention
  (``video_sparse_tiny``, ``SPARSE_STEPS`` steps), 50 guided steps;
* ``distill 4``: a dense 4-step student, ``video_blade_tiny`` with
  ``plugins=[step_distillation]`` (TDM, data-free, ``DISTILL_STEPS`` steps);
* ``blade 4``: the same distillation with the student's attention sparse
  during distillation (``video_blade_tiny`` as is: both plugins).

Every arm samples the same ``CLIPS`` class-conditional clips (same labels
and noise) scored with the diffusion family's metric (Fréchet distance of
per-frame digit features to held-out real clips, classifier accuracy,
temporal consistency). Sampling time is measured after the quality runs, in
interleaved rounds of 4 clips per arm (median of ``ROUNDS``).

Figures: ``blade_fd_ratio_vs_teacher50`` (BLADE's distance / the teacher's),
``blade_speedup_vs_distill_only`` (what sparsity adds on top of fewer steps),
``blade_speedup_vs_teacher50``, and each arm's distance, accuracy and time.

About two hours on 2 CPU cores (training the three arms, one; sampling, the
other), so the
runs live in ``--runs`` (default: a temporary folder) and a rerun with the same
folder resumes or reuses them:

    python benchmarks/blade.py [--quick] [--runs DIR]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import diffusion_reference, interleaved_seconds, parse_args, quality_table, repository_path, write_result

TEACHER = Path(__file__).resolve().parent / "teachers" / "video-32px-16f"
TARGETS = {"blade_fd_ratio_vs_teacher50": "<=1.1", "blade_speedup_vs_distill_only": ">=1.3"}
SPARSE_STEPS, DISTILL_STEPS, CLIPS, ROUNDS, TEACHER_STEPS = 300, 150, 40, 3, 50
# Each arm's training run. No in-run validation: on 4,096-token clips the distillation runs' validation
# (the teacher's 50-step samples for its seeds and the collapse guard's reference) costs ~18 min a run,
# and every arm is scored here on more clips than validation would use.
ARMS = {
    "sparse 50": ["recipe=video_sparse_tiny", "trainer.limit_val_batches=0"],
    "distill 4": ["recipe=video_blade_tiny", "plugins=[step_distillation]", "trainer.limit_val_batches=0"],
    "blade 4": ["recipe=video_blade_tiny", "trainer.limit_val_batches=0"],
}


def main() -> None:
    def options(parser) -> None:
        parser.add_argument(
            "--runs", type=Path, help="where the arms' training runs live; a rerun resumes or reuses them"
        )
        parser.add_argument(
            "--teacher", type=Path, default=TEACHER, help="the dense video teacher (a diffusers folder)"
        )

    args = parse_args(__doc__.splitlines()[0], options)
    teacher_dir = args.teacher.resolve()
    sparse_steps, distill_steps, clips, rounds = (
        (3, 3, 4, 1) if args.quick else (SPARSE_STEPS, DISTILL_STEPS, CLIPS, ROUNDS)
    )
    teacher_steps = 2 if args.quick else TEACHER_STEPS

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    manager, config, real, images = diffusion_reference(
        ["recipe=video_blade_tiny", f"model.pretrained={teacher_dir}"], 200
    )
    shape = (config.model.channels, config.data.frames, config.data.resolution, config.data.resolution)
    guidance, shift = config.sample.guidance, config.sample.shift

    with tempfile.TemporaryDirectory() as scratch:
        runs_root = args.runs.resolve() if args.runs else Path(scratch)
        trained, generators = {}, {}
        for arm, overrides in ARMS.items():
            steps = sparse_steps if arm.startswith("sparse") else distill_steps
            run_dir = runs_root / arm.replace(" ", "-")
            began = time.perf_counter()
            result = train(
                [
                    *overrides,
                    f"model.pretrained={teacher_dir}",
                    f"trainer.max_steps={steps}",
                    "sample.fd_samples=0",
                    f"run.dir={run_dir}",
                    "checkpoint.resume=auto",
                    "trainer.progress_bar=false",
                ],
                autoload=False,
            )
            trained[arm] = {
                "steps": result.summary["steps"],
                "seconds": round(time.perf_counter() - began, 1),
                "resumed_from_step": result.summary["resumed_from_step"],
                "train_loss": result.summary["train_loss"],
                "val_loss": result.summary["val_loss"],
                "figures": result.summary["plugin_figures"],
            }
            print(f"{arm}: {trained[arm]}", flush=True)

        with distributed.initialized(ParallelConfig()):
            teacher = DiffusionModel.from_pretrained(teacher_dir, tokens=config.conditioning.tokens).eval()
            generators["teacher 50"] = FlowSampler(teacher, steps=teacher_steps, guidance=guidance, shift=shift)
            for arm in ARMS:
                loaded = load_run(runs_root / arm.replace(" ", "-"), manager=manager)
                loaded.model.eval()
                generators[arm] = (
                    FlowSampler(loaded.model, steps=teacher_steps, guidance=guidance, shift=shift)
                    if arm == "sparse 50"
                    else loaded.generator
                )

            scores = {}
            for arm, sampler in generators.items():
                scores[arm] = quality(sampler, shape, real, images, clips, 10, seed=10_000)
                print(f"{arm}: {scores[arm]}", flush=True)
            time_of = interleaved_seconds(generators, Condition(labels=class_labels(4)), shape, rounds)

    teacher_fd = scores["teacher 50"]["fd"]
    figures = {
        "blade_fd_ratio_vs_teacher50": scores["blade 4"]["fd"] / teacher_fd,
        "blade_speedup_vs_distill_only": time_of["distill 4"] / time_of["blade 4"],
        "blade_speedup_vs_teacher50": time_of["teacher 50"] / time_of["blade 4"],
        "distill_fd_ratio_vs_teacher50": scores["distill 4"]["fd"] / teacher_fd,
        "sparse_fd_ratio_vs_teacher50": scores["sparse 50"]["fd"] / teacher_fd,
        "sparse_speedup_vs_teacher50": time_of["teacher 50"] / time_of["sparse 50"],
        "distill_speedup_vs_teacher50": time_of["teacher 50"] / time_of["distill 4"],
    }
    for arm, score in scores.items():
        key = arm.replace(" ", "")
        figures[f"{key}_fd"] = score["fd"]
        figures[f"{key}_accuracy"] = score["accuracy"]
        figures[f"{key}_seconds_per_4_clips"] = time_of[arm]
    columns = ["temporal consistency", "s per 4 clips", "speedup vs teacher 50"]
    cells = {
        arm: [f"{s['temporal_consistency']:.3f}", f"{time_of[arm]:.2f}", f"{time_of['teacher 50'] / time_of[arm]:.1f}"]
        for arm, s in scores.items()
    }
    details = {
        "teacher": repository_path(teacher_dir),
        "clips": clips,
        "training": trained,
        "real_temporal_consistency": scores["teacher 50"]["temporal_consistency_real"],
        "tables": quality_table("4,096-token clips, four arms", scores, ("teacher 50", teacher_fd), columns, cells),
    }
    write_result("blade", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
