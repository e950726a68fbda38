"""What ``trainer.precision`` buys in training throughput: llm_tiny at bf16-mixed and bf16-true over 32-true.

Each arm is the llm_tiny model built by the llm family from the same seed, with
the same AdamW, schedule, clipping and batches, in one process, put in its
precision by Lightning's own precision plugins (``MixedPrecision`` autocasts the
forward over fp32 master weights; ``HalfPrecision`` converts the module, so its
optimizer state is bf16 too), as ``trainer.precision`` does. The arms alternate
in rounds of steps; tokens/s is the batch's tokens over each arm's median step
time. The machine's peak matmul rate in each dtype (``kernels/peak.py``) is
reported beside it: whether bf16 helps depends on the CPU's matmul units, so it
is measured, never assumed. Reported figures; the issue sets no threshold.

    python benchmarks/precision_throughput.py [--quick]
"""

from __future__ import annotations

import time
from typing import Any

from common import median, parse_args, train_step, write_result

MODELS = {
    "llm_tiny": ["recipe=llm_tiny", "data.num_workers=0", "optimizer.warmup_steps=0"],
    # llm_125m's width (768, 12 heads) at 4 layers on batch 4 x 512: matmuls large enough for the
    # matmul units to matter, as in the sharding issue's memory benchmark.
    "llm_125m_width_4_layers": [
        "recipe=llm_125m",
        "model.num_layers=4",
        "model.max_seq_len=512",
        "data.seq_len=512",
        "data.batch_size=4",
        "data.num_workers=0",
        "optimizer.warmup_steps=0",
    ],
}
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


def _plugin(precision: str) -> Any:
    from pytorch_lightning.plugins.precision import HalfPrecision, MixedPrecision, Precision

    if precision == "bf16-mixed":
        return MixedPrecision("bf16-mixed", "cpu")
    if precision == "bf16-true":
        return HalfPrecision("bf16-true")
    return Precision()


def _arm(overrides: list[str], precision: str) -> dict[str, Any]:
    import pytorch_lightning as pl

    from jevons.framework.config.compose import compose_config
    from jevons.framework.optim import as_optimization, default_optimizer
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [*overrides, f"trainer.precision={precision}"])
    family = manager.family(config.family)
    pl.seed_everything(config.seed, verbose=False)
    plugin = _plugin(precision)
    model = plugin.convert_module(family.build_model(config))
    return {
        "config": config,
        "plugin": plugin,
        "model": model,
        "objective": family.default_objective(model, config),
        "optimization": as_optimization(default_optimizer(model, config), config),
        "times": [],
        "losses": [],
    }


def _step(arm: dict[str, Any], batch: Any) -> float:
    plugin = arm["plugin"]
    started = time.perf_counter()
    with plugin.forward_context():
        # The objective's forward under the precision's context, as Lightning's training_step runs.
        objective = arm["objective"]
        out = train_step(
            arm["model"],
            objective,
            arm["optimization"],
            plugin.convert_input(batch),
            arm["config"].trainer.gradient_clip_val,
        )
    arm["losses"].append(out.loss.item())
    return time.perf_counter() - started


def _measure(overrides: list[str], rounds: int, per_round: int, warmup: int) -> dict[str, Any]:
    """Tokens/s and the last loss of each precision's arm, the arms alternating in rounds."""
    from jevons.framework import distributed
    from jevons.framework.build import default_batch_sampler
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.plugin_manager import PluginManager

    with distributed.initialized(ParallelConfig()):
        arms = {precision: _arm(overrides, precision) for precision in PRECISIONS}
        config = arms["32-true"]["config"]
        dataset = PluginManager.load(autoload=False).family(config.family).build_dataset(config, "train")
        loader = make_dataloader(dataset, default_batch_sampler(dataset, config, "train"), 0)
        batches = [loaded.data for _, loaded in zip(range(warmup + rounds * per_round), loader, strict=False)]
        for arm in arms.values():
            for batch in batches[:warmup]:
                _step(arm, batch)
        position = warmup
        for _ in range(rounds):
            chunk = batches[position : position + per_round]
            for arm in arms.values():
                arm["times"] += [_step(arm, b) for b in chunk]
            position += per_round
    tokens = config.data.batch_size * config.data.seq_len
    return {
        "tokens": tokens,
        "steps": rounds * per_round,
        "rate": {p: tokens / median(arms[p]["times"]) for p in PRECISIONS},
        "loss": {p: arms[p]["losses"][-1] for p in PRECISIONS},
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    schedule = {"llm_tiny": (8, 10, 3), "llm_125m_width_4_layers": (4, 3, 1)}
    if args.quick:
        schedule = {"llm_tiny": (2, 3, 2), "llm_125m_width_4_layers": (1, 1, 1)}

    import torch

    from jevons.kernels.peak import measure_peak_matmul

    measured = {name: _measure(overrides, *schedule[name]) for name, overrides in MODELS.items()}
    peak = {dtype: measure_peak_matmul(torch.device("cpu"), dtype) / 1e9 for dtype in (torch.float32, torch.bfloat16)}
    tiny, wide = measured["llm_tiny"]["rate"], measured["llm_125m_width_4_layers"]["rate"]
    figures = {
        "bf16_mixed_tokens_per_s_ratio_vs_fp32": tiny["bf16-mixed"] / tiny["32-true"],
        "bf16_true_tokens_per_s_ratio_vs_fp32": tiny["bf16-true"] / tiny["32-true"],
        "bf16_mixed_tokens_per_s_ratio_vs_fp32_768_wide": wide["bf16-mixed"] / wide["32-true"],
        "bf16_true_tokens_per_s_ratio_vs_fp32_768_wide": wide["bf16-true"] / wide["32-true"],
        "peak_matmul_gflops_fp32": peak[torch.float32],
        "peak_matmul_gflops_bf16": peak[torch.bfloat16],
    }
    details = {
        "models": MODELS,
        "tables": {
            **{
                f"Training throughput, {name}": {
                    "columns": ["precision", "median step ms", "tokens/s", "loss after the last step", "steps timed"],
                    "rows": [
                        [
                            p,
                            f"{1000 * m['tokens'] / m['rate'][p]:.1f}",
                            f"{m['rate'][p]:.0f}",
                            f"{m['loss'][p]:.4f}",
                            m["steps"],
                        ]
                        for p in PRECISIONS
                    ],
                }
                for name, m in measured.items()
            },
            "Peak matmul rate (kernels/peak.py)": {
                "columns": ["dtype", "GFLOP/s"],
                "rows": [["float32", f"{peak[torch.float32]:.0f}"], ["bfloat16", f"{peak[torch.bfloat16]:.0f}"]],
            },
        },
    }
    write_result("precision_throughput", args.quick, figures, {}, details)  # reported; the issue sets no threshold


if __name__ == "__main__":
    main()
