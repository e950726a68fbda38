"""What ``trainer.activation_checkpointing`` saves and costs: activation bytes kept for backward, and step time.

The model is the sharding issue's: llm_125m's width (768, 12 heads) at 4 layers,
batch 4 x 512 tokens, in one process; arms ``none``, ``full`` and every 2nd
block (``2``), each built by the framework's build from the same seed, as
``trainer.activation_checkpointing`` builds it.

Saved bytes are measured with torch.profiler's memory view around the forward
alone: the net bytes the forward allocated and did not free, which is what it
keeps for backward (plus the loss). Saved-tensor hooks would undercount: the
checkpoint's own hooks hide the tensors of its region from outer hooks. Each
arm is measured three times; the median counts. Step time is forward +
backward + AdamW, the arms alternating in rounds.

    python benchmarks/activation_checkpointing.py [--quick]

Figures: ``ac_full_saved_bytes_ratio`` (full over none; target <= 0.35),
``ac_full_step_time_ratio`` (full over none; reported).
"""

from __future__ import annotations

import time
from typing import Any

from common import median, parse_args, train_step, write_result

MODEL = [
    "recipe=llm_125m",
    "model.num_layers=4",
    "model.max_seq_len=512",
    "data.seq_len=512",
    "data.batch_size=4",
    "data.num_workers=0",
    "optimizer.warmup_steps=0",
]
ARMS = ("none", "full", "2")


def _arm(setting: str) -> dict[str, Any]:
    import torch

    from jevons.framework.build import build_model_and_objective
    from jevons.framework.config.compose import compose_config
    from jevons.framework.optim import as_optimization, default_optimizer
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [*MODEL, f"trainer.activation_checkpointing={setting}"])
    torch.manual_seed(config.seed)
    model, objective, _ = build_model_and_objective(manager, manager.family(config.family), config)
    model.train()
    return {
        "config": config,
        "model": model,
        "objective": objective,
        "optimization": as_optimization(default_optimizer(model, config), config),
        "saved": [],
        "times": [],
    }


def _saved_bytes(arm: dict[str, Any], batch: Any) -> int:
    """Net bytes the forward allocated and kept: its activations saved for backward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        loss = arm["objective"](arm["model"], batch).loss
    kept = sum(event.self_cpu_memory_usage for event in profiler.key_averages())
    loss.backward()  # frees what the forward kept
    arm["model"].zero_grad(set_to_none=True)
    return int(kept)


def _step_seconds(arm: dict[str, Any], batch: Any) -> float:
    started = time.perf_counter()
    train_step(arm["model"], arm["objective"], arm["optimization"], batch, arm["config"].trainer.gradient_clip_val)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats, rounds, per_round = (1, 1, 1) if args.quick else (3, 4, 3)

    from jevons.framework import distributed
    from jevons.framework.build import default_batch_sampler
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.plugin_manager import PluginManager

    with distributed.initialized(ParallelConfig()):
        arms = {setting: _arm(setting) for setting in ARMS}
        config = arms["none"]["config"]
        dataset = PluginManager.load(autoload=False).family(config.family).build_dataset(config, "train")
        loader = make_dataloader(dataset, default_batch_sampler(dataset, config, "train"), 0)
        batches = [loaded.data for _, loaded in zip(range(1 + rounds * per_round), loader, strict=False)]
        for _ in range(repeats):
            for arm in arms.values():
                arm["saved"].append(_saved_bytes(arm, batches[0]))
        for number in range(rounds):
            chunk = batches[1 + number * per_round : 1 + (number + 1) * per_round]
            for arm in arms.values():
                arm["times"] += [_step_seconds(arm, b) for b in chunk]

    saved = {s: median(arms[s]["saved"]) for s in ARMS}
    step = {s: median(arms[s]["times"]) for s in ARMS}
    figures = {
        "ac_full_saved_bytes_ratio": saved["full"] / saved["none"],
        "ac_full_step_time_ratio": step["full"] / step["none"],
        "ac_every_2_saved_bytes_ratio": saved["2"] / saved["none"],
        "ac_every_2_step_time_ratio": step["2"] / step["none"],
    }
    details = {
        "model": MODEL,
        "saved_bytes_measurements": {s: arms[s]["saved"] for s in ARMS},
        "tables": {
            "Activation checkpointing, llm 768 wide x 4 layers, batch 4 x 512": {
                "columns": ["activation_checkpointing", "saved for backward (MiB)", "median step s", "steps timed"],
                "rows": [[s, f"{saved[s] / 2**20:.1f}", f"{step[s]:.2f}", len(arms[s]["times"])] for s in ARMS],
            }
        },
    }
    write_result("activation_checkpointing", args.quick, figures, {"ac_full_saved_bytes_ratio": "<= 0.35"}, details)


if __name__ == "__main__":
    main()
