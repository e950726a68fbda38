"""What ``trainer.compile`` buys per training step: llm_tiny with its blocks compiled in place vs eager.

Both arms are the llm_tiny model built by the llm family from the same seed,
with the same AdamW, schedule, clipping and batches, in one process. The
compiled arm is compiled exactly as ``trainer.compile=true`` compiles it
(``framework.build.compile_blocks``: ``Module.compile`` per block); its first
steps, which compile, are timed apart (``compile_overhead_seconds``: their
time over the eager arm's first steps). Then the arms
alternate in rounds of steps and the median steady step time of each is
compared: ``compile_step_speedup`` = eager / compiled (reported; the issue
sets no threshold). The losses of the two arms are compared step by step too.

    python benchmarks/compile_speedup.py [--quick]
"""

from __future__ import annotations

import time
from typing import Any

from common import median, parse_args, train_step, write_result

OVERRIDES = ["recipe=llm_tiny", "data.num_workers=0", "optimizer.warmup_steps=0"]


def _arm(compiled: bool) -> dict[str, Any]:
    import pytorch_lightning as pl

    from jevons.framework.build import compile_blocks
    from jevons.framework.config.compose import compose_config
    from jevons.framework.optim import as_optimization, default_optimizer
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, OVERRIDES)
    family = manager.family(config.family)
    pl.seed_everything(config.seed, verbose=False)
    model = family.build_model(config)
    blocks = compile_blocks(family, model) if compiled else []
    return {
        "config": config,
        "model": model,
        "objective": family.default_objective(model, config),
        "optimization": as_optimization(default_optimizer(model, config), config),
        "blocks": blocks,
        "times": [],
        "losses": [],
    }


def _step(arm: dict[str, Any], batch: Any) -> float:
    started = time.perf_counter()
    out = train_step(
        arm["model"], arm["objective"], arm["optimization"], batch, arm["config"].trainer.gradient_clip_val
    )
    loss = out.loss.item()
    arm["losses"].append(loss)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, per_round, warmup = (2, 3, 2) if args.quick else (8, 10, 3)

    from jevons.framework import distributed
    from jevons.framework.build import default_batch_sampler
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.plugin_manager import PluginManager

    with distributed.initialized(ParallelConfig()):
        arms = {"eager": _arm(False), "compiled": _arm(True)}
        config = arms["eager"]["config"]
        dataset = PluginManager.load(autoload=False).family(config.family).build_dataset(config, "train")
        loader = make_dataloader(dataset, default_batch_sampler(dataset, config, "train"), 0)
        batches = [loaded.data for _, loaded in zip(range(warmup + rounds * per_round), loader, strict=False)]

        compile_seconds = sum(_step(arms["compiled"], b) for b in batches[:warmup])
        eager_warmup = sum(_step(arms["eager"], b) for b in batches[:warmup])
        position = warmup
        for _ in range(rounds):
            chunk = batches[position : position + per_round]
            for name in ("eager", "compiled"):
                arms[name]["times"] += [_step(arms[name], b) for b in chunk]
            position += per_round

    eager_ms, compiled_ms = (1000 * median(arms[n]["times"]) for n in ("eager", "compiled"))
    worst = max(abs(a - b) for a, b in zip(arms["eager"]["losses"], arms["compiled"]["losses"], strict=True))
    figures = {
        "compile_step_speedup": eager_ms / compiled_ms,
        "eager_step_ms": eager_ms,
        "compiled_step_ms": compiled_ms,
        "compile_overhead_seconds": compile_seconds - eager_warmup,
        "max_loss_difference": worst,
    }
    details = {
        "overrides": OVERRIDES,
        "compiled_blocks": arms["compiled"]["blocks"],
        "steps_timed_per_arm": rounds * per_round,
        "tables": {
            "Step time, llm_tiny": {
                "columns": ["arm", "median step ms", "steps timed"],
                "rows": [
                    ["eager", f"{eager_ms:.1f}", rounds * per_round],
                    ["trainer.compile", f"{compiled_ms:.1f}", rounds * per_round],
                ],
            }
        },
    }
    write_result("compile_speedup", args.quick, figures, {}, details)  # the issue asks for the figure, no threshold


if __name__ == "__main__":
    main()
