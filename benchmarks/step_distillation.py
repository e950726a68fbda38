"""Data-free 4-step students of the 16 px digit teacher: TDM and the BOSS baseline against the teacher's sampler.

The teacher is the committed ``benchmarks/teachers/image-16px`` (image_tiny
trained 3,000 steps), sampled with 50 guided Euler steps (guidance 2). Each
student starts from it and is distilled by ``image_distill_tiny`` for
``STEPS`` steps of 16 noise seeds (no data is read), then samples in 4
unguided steps. Every arm draws the same 1,000 class-conditional samples
(same labels and seeds) and is scored with the diffusion family's
digit-feature Fréchet distance and classifier accuracy, as in every
diffusion benchmark here; also:

* ``teacher 4 steps``: the teacher itself in 4 guided steps, undistilled —
  what cutting steps alone gives (on this metric, fewer Euler steps of this
  teacher *lower* the distance: see the lowres_cascade benchmark);
* the mean squared difference of each 4-step arm's samples to the 50-step
  teacher's from the same noise (``mse_to_teacher50``);
* within-class sample diversity relative to the teacher's (collapse check);
* sampling throughput, interleaved rounds, median of five.

    python benchmarks/step_distillation.py [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from common import diffusion_reference, interleaved_rates, parse_args, quality_table, write_result

TEACHER = Path(__file__).resolve().parent / "teachers" / "image-16px"
TARGETS = {"tdm_fd_ratio_4step_vs_teacher50": "<=1.1"}
STEPS = 400


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    steps, count = (10, 100) if args.quick else (STEPS, 1000)

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.plugins.step_distillation.guard import within_class_diversity
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    manager, config, real, images = diffusion_reference(["recipe=image_tiny"], 1000)
    shape = (1, 1, 16, 16)
    labels = class_labels(count)
    conditions = Condition(labels=labels)
    guidance = config.sample.guidance

    runs, trained = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for method in ("tdm", "boss"):
            started = time.perf_counter()
            result = train(
                [
                    "recipe=image_distill_tiny",
                    f"model.pretrained={TEACHER}",
                    f"step_distillation.method={method}",
                    f"trainer.max_steps={steps}",
                    f"trainer.val_check_interval={steps}",
                    "data.batch_size=16",
                    "sample.fd_samples=0",
                    f"run.root={root}",
                    "trainer.progress_bar=false",
                ],
                autoload=False,
            )
            trained[method] = {
                "seconds": time.perf_counter() - started,
                "val_loss": result.summary["val_loss"],
                "figures": result.summary["plugin_figures"]["step_distillation"],
            }
            runs[method] = result.run_dir
            print(
                f"{method}: {steps} steps in {trained[method]['seconds']:.0f} s, val MSE to teacher {result.summary['val_loss']:.4f}",
                flush=True,
            )

        with distributed.initialized(ParallelConfig()):
            teacher = DiffusionModel.from_pretrained(TEACHER, tokens=config.conditioning.tokens).eval()
            arms = {
                "teacher50": FlowSampler(teacher, steps=50, guidance=guidance, shift=config.sample.shift),
                "teacher4": FlowSampler(teacher, steps=4, guidance=guidance, shift=config.sample.shift),
            }
            for method, run_dir in runs.items():
                arms[method] = load_run(run_dir, manager=manager).generator
            scores, samples = {}, {}
            for name, sampler in arms.items():
                scores[name] = quality(sampler, shape, real, images, count, 250, seed=10_000)
                samples[name] = torch.cat(
                    [sampler(conditions[i : i + 250], shape, seed=20_000 + i) for i in range(0, count, 250)]
                )
                print(f"{name}: FD {scores[name]['fd']:.2f}, accuracy {scores[name]['accuracy']:.3f}", flush=True)
            for name in arms:
                scores[name]["mse_to_teacher50"] = float((samples[name] - samples["teacher50"]).pow(2).mean())
                scores[name]["diversity_ratio"] = within_class_diversity(
                    samples[name], labels[:, 0]
                ) / within_class_diversity(samples["teacher50"], labels[:, 0])
            rates = interleaved_rates(arms, conditions[:250], shape, 2 if args.quick else 5)

    teacher50 = scores["teacher50"]
    figures = {
        "tdm_fd_ratio_4step_vs_teacher50": scores["tdm"]["fd"] / teacher50["fd"],
        "boss_fd_ratio_4step_vs_teacher50": scores["boss"]["fd"] / teacher50["fd"],
        "teacher4_fd_ratio_vs_teacher50": scores["teacher4"]["fd"] / teacher50["fd"],
        "sampling_speedup_student4_vs_teacher50": rates["tdm"] / rates["teacher50"],
    }
    for name, score in scores.items():
        figures[f"{name}_fd"] = score["fd"]
        figures[f"{name}_accuracy"] = score["accuracy"]
        figures[f"{name}_diversity_ratio"] = score["diversity_ratio"]
        figures[f"{name}_mse_to_teacher50"] = score["mse_to_teacher50"]
        figures[f"{name}_images_per_s"] = rates[name]
    columns = ["MSE to teacher 50 (same noise)", "diversity / teacher 50", "images/s"]
    cells = {
        name: [f"{s['mse_to_teacher50']:.4f}", f"{s['diversity_ratio']:.3f}", f"{rates[name]:.1f}"]
        for name, s in scores.items()
    }
    details = {
        "distillation": f"{steps} steps x 16 noise seeds, image_distill_tiny (lr 1e-4, constant)",
        "samples": count,
        "training": trained,
        "tables": quality_table(
            "4-step students against the teacher", scores, ("teacher 50", teacher50["fd"]), columns, cells
        ),
    }
    write_result("step_distillation", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
