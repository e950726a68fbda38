"""An image teacher's sample quality at 50, 20, 8 and 4 Euler steps: the reference table for the
step-distillation and cascade plugins, on the digit or the glyph testbed.

    python benchmarks/diffusion_quality.py [--quick]                    # digits: results/diffusion_quality.json
    python benchmarks/diffusion_quality.py --testbed glyphs [--quick]   # results/diffusion_quality_glyphs.json

**Digits.** The teacher is the committed export in
``benchmarks/teachers/image-16px`` (``benchmarks/teachers/train_teachers.py
image`` regenerates it). For each step count: 1,000 class-conditional samples
(100 per digit, classifier-free guidance 2.0, diffusers'
FlowMatchEulerDiscreteScheduler), their Fréchet distance to the held-out
digits in the features of the family's digit classifier (the stand-in for FID
at this scale), the classifier's accuracy on them, and the sampling wall time
per sample.

**Glyphs.** The teacher is ``benchmarks/teachers/glyph-image-32px``
(``train_teachers.py glyph-image``: image_glyphs, 256 tokens an image). 1,000
samples cycling through the 32 classes, every step count from the same seeds
and with the schedule shift the students use (the recipe's), scored against
1,000 held-out-font glyphs by the committed glyph feature network: Fréchet
distance with its 95% bootstrap interval, improved precision and recall, and
class accuracy. The glyph testbed is worth distilling on only if its teacher
is good at 50 steps (accuracy >= 0.9) and measurably worse at 4
(``teacher4_fd_ratio_vs_teacher50`` >= 1.5).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import parse_args, repository_path, write_result

TEACHERS = Path(__file__).resolve().parent / "teachers"
TESTBEDS: dict[str, dict[str, Any]] = {
    "digits": {
        "teacher": TEACHERS / "image-16px",
        "recipe": "image_tiny",
        "result": "diffusion_quality",
        "targets": {"accuracy_steps_50": ">=0.70"},
    },
    "glyphs": {
        "teacher": TEACHERS / "glyph-image-32px",
        "recipe": "image_glyphs",
        "result": "diffusion_quality_glyphs",
        "targets": {"accuracy_steps_50": ">=0.9", "teacher4_fd_ratio_vs_teacher50": ">=1.5"},
    },
}


def main() -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--testbed", choices=sorted(TESTBEDS), default="digits")

    args = parse_args(__doc__.splitlines()[0], options)
    testbed = TESTBEDS[args.testbed]
    count, step_counts = (100, (8, 4)) if args.quick else (1000, (50, 20, 8, 4))

    import torch

    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.recipes.diffusion.evaluate import glyph_sample_quality, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    torch.manual_seed(0)
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [f"recipe={testbed['recipe']}"])
    family = manager.family("diffusion")
    model = DiffusionModel.from_pretrained(testbed["teacher"], tokens=config.conditioning.tokens).eval()
    real = family.real_reference(config, 1000)
    shape = (config.model.channels, 1, config.data.resolution, config.data.resolution)
    figures: dict[str, float] = {}
    rows = []
    for steps in step_counts:
        sampler = FlowSampler(model, steps=steps, guidance=config.sample.guidance, shift=config.sample.shift)
        started = time.perf_counter()
        if args.testbed == "glyphs":
            metrics, _ = glyph_sample_quality(sampler, shape, real, count, 250, seed=10_000)
        else:
            metrics = quality(sampler, shape, real, family.images_dir(config), count, 250, seed=10_000)
        seconds = time.perf_counter() - started
        figures[f"fd_steps_{steps}"] = metrics["fd"]
        figures[f"accuracy_steps_{steps}"] = metrics["accuracy"]
        figures[f"sample_ms_per_image_steps_{steps}"] = 1000 * seconds / count
        row = [steps, f"{metrics['fd']:.2f}", f"{metrics['accuracy']:.3f}", f"{1000 * seconds / count:.1f}"]
        if args.testbed == "glyphs":
            figures[f"precision_steps_{steps}"] = metrics["precision"]
            figures[f"recall_steps_{steps}"] = metrics["recall"]
            row[2:2] = [
                f"[{metrics['fd_low']:.2f}, {metrics['fd_high']:.2f}]",
                f"{metrics['precision']:.3f}",
                f"{metrics['recall']:.3f}",
            ]
        rows.append(row)
        print(f"{steps} steps: FD {metrics['fd']:.2f}, accuracy {metrics['accuracy']:.3f}", flush=True)
    fewest, most = min(step_counts), max(step_counts)
    figures[f"teacher{fewest}_fd_ratio_vs_teacher{most}"] = figures[f"fd_steps_{fewest}"] / figures[f"fd_steps_{most}"]
    columns = ["Euler steps", "Fréchet distance", "accuracy", "ms per image (incl. metric)"]
    if args.testbed == "glyphs":
        columns[2:2] = ["95% interval", "precision", "recall"]
    details = {
        "testbed": args.testbed,
        "teacher": repository_path(testbed["teacher"]),
        "samples": count,
        "real_samples": len(real),
        "guidance": config.sample.guidance,
        "shift": config.sample.shift,
        "tables": {"Teacher quality by sampling steps": {"columns": columns, "rows": rows}},
    }
    command = "python benchmarks/diffusion_quality.py" + (" --testbed glyphs" if args.testbed == "glyphs" else "")
    write_result(testbed["result"], args.quick, figures, testbed["targets"] if not args.quick else {}, details, command)


if __name__ == "__main__":
    main()
