"""LowDiff cascade vs a single-resolution model with the same training budget: throughput at equal quality.

    python benchmarks/lowres_cascade.py --testbed glyphs [--quick] [--budget-minutes M]

**Glyphs** (``results/lowres_cascade_glyphs.json``): a 16 px -> 32 px cascade
(``image_glyphs_lowdiff``) against the single 32 px model (``image_glyphs``),
both trained from scratch here on glyph-images for the same wall-clock budget
(default 12 minutes each): each arm's seconds per step are measured first (40
steps, the last 30 timed), and its ``max_steps`` is the budget over that, so
both finish their learning-rate schedules. Each is sampled for 500
class-conditional glyphs from the same seeds and scored by the glyph feature
network (FD with its 95% interval, precision, recall, accuracy); the single
model is swept over Euler step counts, the cascade over step allocations, and
throughput is timed in interleaved rounds as below. Targets:
``throughput_ratio_at_equal_quality`` >= 1.5 and ``quality_ratio_vs_single_res``
<= 1.1.

**Digits** (the committed digit-testbed result). Budget: both models see 3,000 steps x 32 images (the same steps x batch).
The single-resolution model is the committed image teacher
(``benchmarks/teachers/image-16px``, image_tiny for 3,000 steps); the cascade
(image_lowdiff_tiny: 8 px then 16 px, one set of weights) is trained here for
the same 3,000 x 32. Each is sampled for 1,000 class-conditional images and
scored with the diffusion family's digit-feature Fréchet distance.

The single-resolution model is swept over Euler step counts; the cheapest
count whose distance is at most the cascade's is "equal quality", and
``throughput_ratio_at_equal_quality`` is the cascade's images per second over
the single model's at that count (sampling only, timed separately from the
metric). ``quality_ratio_vs_single_res`` is the cascade's distance over the
single model's at its full 50 steps. The step allocations tried are in the
JSON.

Throughput is timed after every quality measurement, in interleaved rounds
(each round samples 250 images with every arm in turn; the median of five
rounds per arm), so a slow spell on a shared machine falls on all arms alike.

Training the cascade takes most of the time and is not timed, so it can run
apart from the measurement (e.g. while the machine is busy):

    python benchmarks/lowres_cascade.py [--quick]
    python benchmarks/lowres_cascade.py --train-only            # prints the run directory
    python benchmarks/lowres_cascade.py --cascade-run RUN_DIR   # measure a trained cascade
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from common import diffusion_reference, interleaved_rates, parse_args, write_result

TEACHER = Path(__file__).resolve().parent / "teachers" / "image-16px"
# Steps per stage (8 px, 16 px) tried besides the recipe's default.
ALLOCATIONS = [(20, 6), (12, 4), (8, 4), (8, 2), (4, 2)]
TARGETS = {"throughput_ratio_at_equal_quality": ">=1.5", "quality_ratio_vs_single_res": "<=1.1"}


def main() -> None:
    def options(parser) -> None:
        parser.add_argument(
            "--train-only", action="store_true", help="train the cascade, print its run directory, stop"
        )
        parser.add_argument("--cascade-run", help="a finished cascade run of this benchmark's budget to measure")
        parser.add_argument("--testbed", choices=["digits", "glyphs"], default="digits")
        parser.add_argument("--budget-minutes", type=float, default=12.0, help="glyphs: training minutes per arm")

    args = parse_args(__doc__.splitlines()[0], options)
    if args.testbed == "glyphs":
        glyph_main(args)
        return
    steps, count, sweep = (60, 100, (4, 8, 20)) if args.quick else (3000, 1000, (4, 6, 8, 12, 16, 20, 30, 50))

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel

    manager, config, real, images = diffusion_reference(["recipe=image_tiny"], 1000)
    shape = (1, 1, 16, 16)
    labels = class_labels(count)

    with tempfile.TemporaryDirectory() as runs:
        if args.cascade_run:
            run_dir = Path(args.cascade_run)
        else:
            overrides = [
                "recipe=image_lowdiff_tiny",
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={steps}",
                "sample.fd_samples=0",
                "optimizer.warmup_steps=100",
                f"run.root={TEACHER.parent / 'runs' if args.train_only else runs}",
            ]
            run_dir = train(overrides, autoload=False).run_dir
            if args.train_only:
                print(f"cascade run: {run_dir}")
                return
        cascade_summary = json.loads((run_dir / "summary.json").read_text())
        if cascade_summary["steps"] != steps:
            raise SystemExit(f"{run_dir} trained {cascade_summary['steps']} steps; this benchmark's budget is {steps}")
        with distributed.initialized(ParallelConfig()):
            cascade = load_run(run_dir, manager=manager)
            stages = [(s.res, s.steps) for s in cascade.config.lowres_cascade.stages]
            default = tuple(k for _, k in stages)
            allocations = [default] + [a for a in ALLOCATIONS if a != default and len(a) == len(stages)]
            if args.quick:
                allocations = allocations[:2]
            tried = {}
            for plan in allocations:
                tried[plan] = quality(cascade.generator, shape, real, images, count, 250, seed=10_000, stage_steps=plan)
                print(f"cascade {plan}: FD {tried[plan]['fd']:.2f}, accuracy {tried[plan]['accuracy']:.3f}", flush=True)

            teacher = DiffusionModel.from_pretrained(TEACHER, tokens=config.conditioning.tokens).eval()
            single = {}
            for n in sweep:
                sampler = FlowSampler(teacher, steps=n, guidance=config.sample.guidance, shift=config.sample.shift)
                single[n] = quality(sampler, shape, real, images, count, 250, seed=10_000)
                print(
                    f"single-res {n} steps: FD {single[n]['fd']:.2f}, accuracy {single[n]['accuracy']:.3f}", flush=True
                )

            arms = {("cascade", plan): (cascade.generator, {"stage_steps": plan}) for plan in tried}
            arms.update(
                {
                    ("single", n): (
                        FlowSampler(teacher, steps=n, guidance=config.sample.guidance, shift=config.sample.shift),
                        {},
                    )
                    for n in single
                }
            )
            rates = interleaved_rates(arms, Condition(labels=labels[:250]), shape, 2 if args.quick else 5)
            for (kind, key), rate in rates.items():
                (tried if kind == "cascade" else single)[key]["images_per_s"] = rate
                print(f"{kind} {key}: {rate:.1f} images/s", flush=True)

    def equal_quality(fd: float) -> int | None:
        """The cheapest single-resolution step count at least as good (a lower distance) as ``fd``."""
        matching = [n for n in sorted(single) if single[n]["fd"] <= fd]
        return matching[0] if matching else None

    full = max(single)
    ratios = {}
    for plan, result in tried.items():
        n = equal_quality(result["fd"])
        # No single-resolution count as good: compare with its full count (the cascade is better there).
        ratios[plan] = result["images_per_s"] / single[n if n is not None else full]["images_per_s"]
    headline = tried[default]
    best = max(ratios, key=ratios.get)
    figures = {
        "throughput_ratio_at_equal_quality": ratios[default],
        "quality_ratio_vs_single_res": headline["fd"] / single[full]["fd"],
        "equal_quality_single_res_steps": equal_quality(headline["fd"]) or full,
        "single_res_has_equal_quality": float(equal_quality(headline["fd"]) is not None),
        "cascade_fd": headline["fd"],
        "cascade_accuracy": headline["accuracy"],
        "cascade_images_per_s": headline["images_per_s"],
        "single_res_fd_full_steps": single[full]["fd"],
        "single_res_accuracy_full_steps": single[full]["accuracy"],
        "throughput_ratio_vs_single_res_full_steps": headline["images_per_s"] / single[full]["images_per_s"],
        "best_allocation_throughput_ratio_at_equal_quality": ratios[best],
        "best_allocation_quality_ratio_vs_single_res": tried[best]["fd"] / single[full]["fd"],
    }
    rows = [
        [f"single 16 px x {n}", f"{s['fd']:.2f}", f"{s['accuracy']:.3f}", f"{s['images_per_s']:.1f}", ""]
        for n, s in single.items()
    ]
    for plan, result in tried.items():
        label = " + ".join(f"{r} px x {k}" for (r, _), k in zip(stages, plan))
        rows.append(
            [
                f"cascade {label}{' (recipe default)' if plan == default else ''}",
                f"{result['fd']:.2f}",
                f"{result['accuracy']:.3f}",
                f"{result['images_per_s']:.1f}",
                f"{ratios[plan]:.2f}",
            ]
        )
    details = {
        "training_budget": f"{steps} steps x 32 images each",
        "samples": count,
        "cascade_stages": stages,
        "cascade_training": {k: cascade_summary.get(k) for k in ("steps", "train_loss", "val_loss", "time_s")},
        "best_allocation": list(best),
        "tables": {
            "Quality and sampling throughput": {
                "columns": ["model", "Fréchet distance", "accuracy", "images/s", "throughput ratio at equal quality"],
                "rows": rows,
            }
        },
    }
    write_result("lowres_cascade", args.quick, figures, TARGETS, details)


GLYPH_SWEEP = (8, 12, 20, 30, 50)
GLYPH_ALLOCATIONS = [(12, 4), (8, 4), (8, 2), (4, 2)]


def _seconds_per_step(overrides: list[str], runs: str) -> float:
    """Training seconds per step of ``overrides``: 40 steps, the last 30 timed (``time/train_s``)."""
    import csv

    from jevons.framework.run import train

    calibration = [
        *overrides,
        "trainer.max_steps=40",
        "trainer.log_every_n_steps=10",
        "trainer.limit_val_batches=0",
        "checkpoint.every_n_steps=null",
        "trainer.progress_bar=false",
        f"run.root={runs}",
    ]
    run_dir = train(calibration, autoload=False).run_dir
    with open(run_dir / "metrics.csv") as handle:
        times = [(int(r["step"]), float(r["time/train_s"])) for r in csv.DictReader(handle) if r.get("time/train_s")]
    (first_step, first), (last_step, last) = times[0], times[-1]
    return (last - first) / (last_step - first_step)


def glyph_main(args: Any) -> None:
    """The glyph testbed: both arms trained here for the same wall-clock budget (see the module docstring)."""

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, glyph_sample_quality
    from jevons.recipes.diffusion.generate import FlowSampler

    budget_s = 60.0 * (0.5 if args.quick else args.budget_minutes)
    count, sweep = (100, (8, 20)) if args.quick else (500, GLYPH_SWEEP)
    manager, config, real, _ = diffusion_reference(["recipe=image_glyphs"], 1000)
    shape = (config.model.channels, 1, config.data.resolution, config.data.resolution)
    recipes = {"single": ["recipe=image_glyphs"], "cascade": ["recipe=image_glyphs_lowdiff"]}
    with tempfile.TemporaryDirectory() as runs:
        per_step = {arm: _seconds_per_step([*r, "sample.fd_samples=0"], runs) for arm, r in recipes.items()}
        trained = {}
        for arm, recipe in recipes.items():
            steps = max(50, int(budget_s / per_step[arm]))
            overrides = [
                *recipe,
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={steps}",
                "trainer.limit_val_batches=2",
                "sample.fd_samples=0",
                "checkpoint.every_n_steps=null",
                "trainer.progress_bar=false",
                f"run.root={runs}",
            ]
            result = train(overrides, autoload=False)
            summary = json.loads((result.run_dir / "summary.json").read_text())
            trained[arm] = {"run_dir": result.run_dir, "steps": steps, "time_s": summary["time_s"]}
            print(f"{arm}: {steps} steps in {summary['time_s']:.0f} s ({per_step[arm]:.3f} s a step)", flush=True)

        with distributed.initialized(ParallelConfig()):
            cascade = load_run(trained["cascade"]["run_dir"], manager=manager)
            single_model = load_run(trained["single"]["run_dir"], manager=manager).model.eval()
            stages = [(s.res, s.steps) for s in cascade.config.lowres_cascade.stages]
            default = tuple(k for _, k in stages)
            allocations = [default] + [a for a in GLYPH_ALLOCATIONS if a != default]
            if args.quick:
                allocations = allocations[:2]
            tried, single = {}, {}
            for plan in allocations:
                tried[plan], _ = glyph_sample_quality(
                    cascade.generator, shape, real, count, 250, seed=10_000, stage_steps=plan
                )
                print(f"cascade {plan}: FD {tried[plan]['fd']:.2f}, accuracy {tried[plan]['accuracy']:.3f}", flush=True)
            guidance, shift = config.sample.guidance, config.sample.shift

            def single_sampler(n: int) -> FlowSampler:
                return FlowSampler(single_model, steps=n, guidance=guidance, shift=shift)

            for n in sweep:
                single[n], _ = glyph_sample_quality(single_sampler(n), shape, real, count, 250, seed=10_000)
                print(f"single 32 px x {n}: FD {single[n]['fd']:.2f}, accuracy {single[n]['accuracy']:.3f}", flush=True)
            arms: dict[Any, Any] = {("cascade", p): (cascade.generator, {"stage_steps": p}) for p in tried}
            arms.update({("single", n): (single_sampler(n), {}) for n in single})
            labels = Condition(labels=class_labels(250, config.conditioning.classes))
            for (kind, key), rate in interleaved_rates(arms, labels, shape, 2 if args.quick else 5).items():
                (tried if kind == "cascade" else single)[key]["images_per_s"] = rate

    def equal_quality(fd: float) -> int | None:
        matching = [n for n in sorted(single) if single[n]["fd"] <= fd]
        return matching[0] if matching else None

    full = max(single)
    ratios = {
        plan: result["images_per_s"] / single[equal_quality(result["fd"]) or full]["images_per_s"]
        for plan, result in tried.items()
    }
    headline, best = tried[default], max(ratios, key=lambda plan: ratios[plan])
    figures = {
        "throughput_ratio_at_equal_quality": ratios[default],
        "quality_ratio_vs_single_res": headline["fd"] / single[full]["fd"],
        "equal_quality_single_res_steps": equal_quality(headline["fd"]) or full,
        "single_res_has_equal_quality": float(equal_quality(headline["fd"]) is not None),
        "cascade_fd": headline["fd"],
        "cascade_fd_low": headline["fd_low"],
        "cascade_fd_high": headline["fd_high"],
        "cascade_accuracy": headline["accuracy"],
        "single_res_fd_full_steps": single[full]["fd"],
        "single_res_fd_low_full_steps": single[full]["fd_low"],
        "single_res_fd_high_full_steps": single[full]["fd_high"],
        "single_res_accuracy_full_steps": single[full]["accuracy"],
        "best_allocation_throughput_ratio_at_equal_quality": ratios[best],
        "best_allocation_quality_ratio_vs_single_res": tried[best]["fd"] / single[full]["fd"],
        "single_train_steps": trained["single"]["steps"],
        "cascade_train_steps": trained["cascade"]["steps"],
        "single_train_s": trained["single"]["time_s"],
        "cascade_train_s": trained["cascade"]["time_s"],
    }

    def row(label: str, s: dict[str, float], ratio: str) -> list[str]:
        interval = f"[{s['fd_low']:.2f}, {s['fd_high']:.2f}]"
        scores = [f"{s['fd']:.2f}", interval, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['accuracy']:.3f}"]
        return [label, *scores, f"{s['images_per_s']:.1f}", ratio]

    rows = [row(f"single 32 px x {n}", s, "") for n, s in single.items()]
    for plan, result in tried.items():
        label = " + ".join(f"{r} px x {k}" for (r, _), k in zip(stages, plan))
        rows.append(
            row(f"cascade {label}{' (recipe default)' if plan == default else ''}", result, f"{ratios[plan]:.2f}")
        )
    columns = ["model", "Fréchet distance", "95% interval", "precision", "recall", "accuracy", "images/s"]
    details = {
        "testbed": "glyphs",
        "training_budget": f"{budget_s / 60:.1f} minutes of training per arm on this machine",
        "seconds_per_step": per_step,
        "samples": count,
        "cascade_stages": stages,
        "best_allocation": list(best),
        "tables": {
            "Quality and sampling throughput": {
                "columns": [*columns, "throughput ratio at equal quality"],
                "rows": rows,
            }
        },
    }
    command = "python benchmarks/lowres_cascade.py --testbed glyphs"
    write_result("lowres_cascade_glyphs", args.quick, figures, TARGETS, details, command)


if __name__ == "__main__":
    main()
