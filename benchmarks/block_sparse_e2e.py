"""Block-sparse attention end to end: the 4,096-token video teacher fine-tuned sparse (video_sparse_tiny) against itself dense.

The dense arm is the committed video teacher
(``benchmarks/teachers/video-32px-16f``: moving digits, 32 px x 16 frames,
4,096 tokens per clip). The sparse arm is ``video_sparse_tiny`` — the same
weights fine-tuned ``STEPS`` steps with adaptive block-sparse self-attention
(coverage 0.95, density clamped to 6.25-25%) — trained here. A third arm,
``sparse zero-shot``, puts the same sparse attention into the teacher
without fine-tuning: what the fine-tuning buys.

Every arm samples the same ``CLIPS`` class-conditional clips (same labels and
noise, the recipe's 20 guided Euler steps) and is scored with the diffusion
family's metric: the Fréchet distance of per-frame digit features to held-out
real clips, classifier accuracy and temporal consistency.
``e2e_quality_ratio`` is the sparse arm's distance over the dense teacher's.

Speed, timed after the quality runs in interleaved rounds (median of
``ROUNDS``) so a slow spell falls on every arm alike:

* ``train_step_speedup``: forward+backward of the flow-matching loss on the
  same batch of 4 clips, dense teacher / fine-tuned sparse model;
* ``sampling_speedup``: one batch of clips sampled, dense / sparse.

The attention density the fine-tuned model actually used while sampling
(its processors' mean kept-block fraction) is reported beside them.

    python benchmarks/block_sparse_e2e.py [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from common import diffusion_reference, median, parse_args, quality_table, repository_path, write_result

TEACHER = Path(__file__).resolve().parent / "teachers" / "video-32px-16f"
TARGETS = {"e2e_quality_ratio": "<=1.1"}
STEPS, CLIPS, ROUNDS = 300, 40, 3


def sparse_processors(model: torch.nn.Module) -> list:
    from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor

    return [m.processor for m in model.modules() if isinstance(getattr(m, "processor", None), BlockSparseWanProcessor)]


def make_sparse(model: torch.nn.Module, config) -> torch.nn.Module:
    """The plugin's processor on every self-attention of ``model`` (the zero-shot arm), as the plugin's hook would."""
    from jevons.plugins.block_sparse_attention import replace_attention

    for name, module in model.named_modules():
        if name.endswith("attn1"):
            module.set_processor(replace_attention(module=module, name=name, config=config))
    return model


def density(model: torch.nn.Module) -> float:
    processors = sparse_processors(model)
    return sum(p.stats.kept_blocks for p in processors) / max(1.0, sum(p.stats.total_blocks for p in processors))


def reset_density(model: torch.nn.Module) -> None:
    from jevons.plugins.block_sparse_attention.processor import SparsityStats

    for processor in sparse_processors(model):
        processor.stats = SparsityStats()


def main() -> None:
    def options(parser) -> None:
        parser.add_argument(
            "--teacher", type=Path, default=TEACHER, help="the dense video teacher (a diffusers folder)"
        )

    args = parse_args(__doc__.splitlines()[0], options)
    teacher_dir = args.teacher.resolve()
    steps, clips, rounds = (4, 4, 1) if args.quick else (STEPS, CLIPS, ROUNDS)

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run
    from jevons.framework.run import train
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.evaluate import class_labels, quality
    from jevons.recipes.diffusion.generate import FlowSampler
    from jevons.recipes.diffusion.model import DiffusionModel
    from jevons.recipes.diffusion.objective import RectifiedFlowObjective

    manager, config, real, images = diffusion_reference(["recipe=video_sparse_tiny"], 200)
    shape = (config.model.channels, config.data.frames, config.data.resolution, config.data.resolution)
    sample = config.sample
    sample_steps = 2 if args.quick else sample.steps

    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = train(
            [
                "recipe=video_sparse_tiny",
                f"model.pretrained={teacher_dir}",
                f"trainer.max_steps={steps}",
                "trainer.limit_val_batches=0",
                "sample.fd_samples=0",
                f"run.root={root}",
                "trainer.progress_bar=false",
            ],
            autoload=False,
        )
        fine_tune = {
            "steps": steps,
            "seconds": round(time.perf_counter() - started, 1),
            "train_loss": result.summary["train_loss"],
            "figures": result.summary["plugin_figures"]["block_sparse_attention"],
        }
        print(f"fine-tuned sparse: {fine_tune}", flush=True)

        with distributed.initialized(ParallelConfig()):
            teacher = DiffusionModel.from_pretrained(teacher_dir, tokens=config.conditioning.tokens).eval()
            zero_shot = make_sparse(
                DiffusionModel.from_pretrained(teacher_dir, tokens=config.conditioning.tokens), config
            ).eval()
            sparse = load_run(result.run_dir, manager=manager).model.eval()
            models = {"dense teacher": teacher, "sparse fine-tuned": sparse, "sparse zero-shot": zero_shot}
            arms = {
                name: FlowSampler(model, steps=sample_steps, guidance=sample.guidance, shift=sample.shift)
                for name, model in models.items()
            }

            scores = {}
            for name, sampler in arms.items():
                reset_density(models[name])
                began = time.perf_counter()
                scores[name] = quality(sampler, shape, real, images, clips, 10, seed=10_000)
                scores[name]["seconds"] = time.perf_counter() - began
                scores[name]["density"] = density(models[name]) if name != "dense teacher" else 1.0
                print(f"{name}: {scores[name]}", flush=True)

            objective = RectifiedFlowObjective(config.conditioning.dropout).eval()  # eval: no condition dropout
            batch = {"video": real[:4], "labels": class_labels(4)}
            step_seconds: dict = {"dense teacher": [], "sparse fine-tuned": []}
            sample_seconds: dict = {"dense teacher": [], "sparse fine-tuned": []}
            labels = Condition(labels=class_labels(4))
            for number in range(rounds):
                for name in step_seconds:
                    model = models[name].train()
                    torch.manual_seed(number)
                    began = time.perf_counter()
                    objective(model, batch).loss.backward()
                    step_seconds[name].append(time.perf_counter() - began)
                    model.zero_grad(set_to_none=True)
                    model.eval()
                    began = time.perf_counter()
                    arms[name](labels, shape, seed=number)
                    sample_seconds[name].append(time.perf_counter() - began)

    dense = scores["dense teacher"]
    figures = {
        "e2e_quality_ratio": scores["sparse fine-tuned"]["fd"] / dense["fd"],
        "zero_shot_quality_ratio": scores["sparse zero-shot"]["fd"] / dense["fd"],
        "train_step_speedup": median(step_seconds["dense teacher"]) / median(step_seconds["sparse fine-tuned"]),
        "sampling_speedup": median(sample_seconds["dense teacher"]) / median(sample_seconds["sparse fine-tuned"]),
        "sampling_density": scores["sparse fine-tuned"]["density"],
        "zero_shot_sampling_density": scores["sparse zero-shot"]["density"],
    }
    for name, score in scores.items():
        key = name.replace(" ", "_").replace("-", "_")
        for metric in ("fd", "accuracy", "temporal_consistency"):
            figures[f"{key}_{metric}"] = score[metric]
    cells = {name: [f"{s['temporal_consistency']:.3f}", f"{s['density']:.3f}"] for name, s in scores.items()}
    details = {
        "teacher": repository_path(teacher_dir),
        "clips": clips,
        "sample_steps": sample_steps,
        "fine_tune": fine_tune,
        "real_temporal_consistency": dense["temporal_consistency_real"],
        "train_step_seconds": {k: round(median(v), 3) for k, v in step_seconds.items()},
        "sampling_seconds_4_clips": {k: round(median(v), 2) for k, v in sample_seconds.items()},
        "tables": quality_table(
            "4,096-token clips: sparse against the dense teacher",
            scores,
            ("dense", dense["fd"]),
            ["temporal consistency", "attention density"],
            cells,
        ),
    }
    write_result("block_sparse_e2e", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
