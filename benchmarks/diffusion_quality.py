"""The image teacher's sample quality at 50, 20, 8 and 4 Euler steps: the reference table for the
step-distillation and cascade plugins.

The teacher is the committed export in ``benchmarks/teachers/image-16px``
(``benchmarks/teachers/train_teachers.py image`` regenerates it). For each step
count: 1,000 class-conditional samples (100 per digit, classifier-free
guidance 2.0, diffusers' FlowMatchEulerDiscreteScheduler), their Fréchet
distance to the held-out digits in the features of the family's digit
classifier (the stand-in for FID at this scale), the classifier's accuracy on
them, and the sampling wall time per sample.

    python benchmarks/diffusion_quality.py [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path

from common import parse_args, write_result

TEACHER = Path(__file__).resolve().parent / "teachers" / "image-16px"
TARGETS = {"accuracy_steps_50": ">=0.70"}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, step_counts = (100, (8, 4)) if args.quick else (1000, (50, 20, 8, 4))

    import torch

    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.recipes.diffusion.evaluate import quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    torch.manual_seed(0)
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=image_tiny"])
    family = manager.family("diffusion")
    model = DiffusionModel.from_pretrained(TEACHER, tokens=config.conditioning.tokens).eval()
    real = family.real_reference(config, 1000)
    shape = (1, 1, config.data.resolution, config.data.resolution)
    figures: dict[str, float] = {}
    rows = []
    for steps in step_counts:
        sampler = FlowSampler(model, steps=steps, guidance=config.sample.guidance, shift=config.sample.shift)
        started = time.perf_counter()
        metrics = quality(sampler, shape, real, family.images_dir(config), count, 250, seed=10_000)
        seconds = time.perf_counter() - started
        figures[f"fd_steps_{steps}"] = metrics["fd"]
        figures[f"accuracy_steps_{steps}"] = metrics["accuracy"]
        figures[f"sample_ms_per_image_steps_{steps}"] = 1000 * seconds / count
        rows.append([steps, f"{metrics['fd']:.2f}", f"{metrics['accuracy']:.3f}", f"{1000 * seconds / count:.1f}"])
        print(f"{steps} steps: FD {metrics['fd']:.2f}, accuracy {metrics['accuracy']:.3f}", flush=True)
    details = {
        "teacher": str(TEACHER.relative_to(Path(__file__).resolve().parents[1])),
        "samples": count,
        "real_samples": len(real),
        "guidance": config.sample.guidance,
        "tables": {
            "Teacher quality by sampling steps": {
                "columns": ["Euler steps", "Fréchet distance", "accuracy", "ms per image (incl. metric)"],
                "rows": rows,
            }
        },
    }
    write_result("diffusion_quality", args.quick, figures, TARGETS if not args.quick else {}, details)


if __name__ == "__main__":
    main()
