"""Data-free 4-step students of an image teacher: TDM and the BOSS baseline against the teacher's sampler.

    python benchmarks/step_distillation.py [--quick]                    # digits: results/step_distillation.json
    python benchmarks/step_distillation.py --testbed glyphs [--quick]   # results/step_distillation_glyphs.json

**Glyphs.** The teacher is ``benchmarks/teachers/glyph-image-32px`` (image_glyphs),
the students ``image_glyphs_distill`` (16 noise seeds per student update, 5
fake-score updates per TDM student update), every arm scored on 1,000 samples
from the same seeds by the glyph feature network (FD with its interval,
precision, recall, accuracy) and by the paired feature distance of each
sample to the 50-step teacher's from the same noise. Targets:
``tdm_fd_ratio_4step_vs_teacher50`` <= 1.1 and ``tdm_fd_ratio_vs_teacher4``
<= 0.7 (the student beats running the teacher with 4 steps).

**Digits** (the committed digit-testbed result). The teacher is the committed ``benchmarks/teachers/image-16px`` (image_tiny
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
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import diffusion_reference, interleaved_rates, parse_args, quality_table, write_result

TEACHERS = Path(__file__).resolve().parent / "teachers"
TESTBEDS: dict[str, dict[str, Any]] = {
    "digits": {
        "teacher": TEACHERS / "image-16px",
        "recipe": "image_tiny",
        "distill": ["recipe=image_distill_tiny", "data.batch_size=16"],
        "result": "step_distillation",
        "targets": {"tdm_fd_ratio_4step_vs_teacher50": "<=1.1"},
    },
    "glyphs": {
        "teacher": TEACHERS / "glyph-image-32px",
        "recipe": "image_glyphs",
        "distill": ["recipe=image_glyphs_distill"],
        "result": "step_distillation_glyphs",
        "targets": {"tdm_fd_ratio_4step_vs_teacher50": "<=1.1", "tdm_fd_ratio_vs_teacher4": "<=0.7"},
    },
}
STEPS = 400
SEEDS_PER_STEP = 16  # both recipes' data.batch_size here
FAKE_UPDATES = 5  # both distillation recipes' step_distillation.fake_updates


def main() -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--testbed", choices=sorted(TESTBEDS), default="digits")

    args = parse_args(__doc__.splitlines()[0], options)
    testbed = TESTBEDS[args.testbed]
    glyphs = args.testbed == "glyphs"
    steps, count = (10, 100) if args.quick else (STEPS, 1000)

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.plugins.step_distillation.guard import within_class_diversity
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, glyph_sample_quality, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    manager, config, real, images = diffusion_reference([f"recipe={testbed['recipe']}"], 1000)
    teacher_folder = testbed["teacher"]
    shape = (config.model.channels, 1, config.data.resolution, config.data.resolution)
    labels = class_labels(count, config.conditioning.classes)
    conditions = Condition(labels=labels)
    guidance = config.sample.guidance

    runs, trained = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for method in ("tdm", "boss"):
            started = time.perf_counter()
            result = train(
                [
                    *testbed["distill"],
                    f"model.pretrained={teacher_folder}",
                    f"step_distillation.method={method}",
                    f"trainer.max_steps={steps}",
                    f"trainer.val_check_interval={steps}",
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
            teacher = DiffusionModel.from_pretrained(teacher_folder, tokens=config.conditioning.tokens).eval()
            arms = {
                "teacher50": FlowSampler(teacher, steps=50, guidance=guidance, shift=config.sample.shift),
                "teacher4": FlowSampler(teacher, steps=4, guidance=guidance, shift=config.sample.shift),
            }
            for method, run_dir in runs.items():
                arms[method] = load_run(run_dir, manager=manager).generator
            scores, samples, scored = {}, {}, {}
            for name, sampler in arms.items():
                if glyphs:  # every arm from the teacher-50's seeds: paired with its samples
                    paired = scored.get("teacher50")
                    scores[name], scored[name] = glyph_sample_quality(
                        sampler, shape, real, count, 250, seed=10_000, paired_with=paired
                    )
                    samples[name] = scored[name]  # already paired by seed: no second set to draw
                else:
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
        "tdm_fd_ratio_vs_teacher4": scores["tdm"]["fd"] / scores["teacher4"]["fd"],
        "boss_fd_ratio_vs_teacher4": scores["boss"]["fd"] / scores["teacher4"]["fd"],
        "sampling_speedup_student4_vs_teacher50": rates["tdm"] / rates["teacher50"],
    }
    for name, score in scores.items():
        figures[f"{name}_fd"] = score["fd"]
        figures[f"{name}_accuracy"] = score["accuracy"]
        figures[f"{name}_diversity_ratio"] = score["diversity_ratio"]
        figures[f"{name}_mse_to_teacher50"] = score["mse_to_teacher50"]
        figures[f"{name}_images_per_s"] = rates[name]
        if glyphs:
            for key in ("fd_low", "fd_high", "precision", "recall", "paired_distance"):
                if key in score:
                    figures[f"{name}_{key}"] = score[key]
    columns = ["MSE to teacher 50 (same noise)", "diversity / teacher 50", "images/s"]
    cells = {
        name: [f"{s['mse_to_teacher50']:.4f}", f"{s['diversity_ratio']:.3f}", f"{rates[name]:.1f}"]
        for name, s in scores.items()
    }
    if glyphs:
        columns[:0] = ["95% interval", "precision", "recall", "feature distance to teacher 50 (same noise)"]
        for name, s in scores.items():
            paired = f"{s['paired_distance']:.2f}" if "paired_distance" in s else "-"
            cells[name][:0] = [
                f"[{s['fd_low']:.2f}, {s['fd_high']:.2f}]",
                f"{s['precision']:.3f}",
                f"{s['recall']:.3f}",
                paired,
            ]
    distill = " ".join(testbed["distill"])
    details = {
        "testbed": args.testbed,
        "distillation": f"{steps} steps x {SEEDS_PER_STEP} noise seeds, {distill} (lr 1e-4, constant; TDM: "
        f"{FAKE_UPDATES} fake-score updates per student update)",
        "samples": count,
        "training": trained,
        "tables": quality_table(
            "4-step students against the teacher", scores, ("teacher 50", teacher50["fd"]), columns, cells
        ),
    }
    command = "python benchmarks/step_distillation.py" + (" --testbed glyphs" if glyphs else "")
    write_result(testbed["result"], args.quick, figures, testbed["targets"], details, command)


if __name__ == "__main__":
    main()
