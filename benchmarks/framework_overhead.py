"""What the framework costs per training step: Jevons vs a plain PyTorch loop vs a plain Lightning module.

All three train the llm_tiny model (built by the llm family from the same
seed) on the same data, batch sampler, DataLoader (one worker), AdamW groups,
LR schedule and gradient clipping, in one process. The Jevons arm is a real
``train recipe=llm_tiny`` run (its callbacks, logging, progress bar and
checkpoint machinery all on); the plain Lightning arm logs the loss each step
and nothing else. Step time is the wall time between consecutive step ends,
so data waits and loop overhead count. Arms are interleaved over several
rounds and the median of all steady-state steps is compared (validation and
checkpoint steps are rare and fall outside the median).

    python benchmarks/framework_overhead.py [--quick]
"""

from __future__ import annotations

import tempfile
from typing import Any

from common import StepTimes, median, parse_args, train_step, write_result

from jevons.framework.config.schema import ParallelConfig

TARGETS = {"step_time_ratio_vs_plain_loop": "<=1.03", "step_time_ratio_vs_plain_lightning": "<=1.01"}


def _components(overrides: list[str]) -> tuple[Any, Any, Any, Any, Any]:
    """Config, model, objective, train DataLoader and optimizer+scheduler, built as Jevons builds them."""
    import pytorch_lightning as pl

    from jevons.framework.build import default_batch_sampler
    from jevons.framework.config.compose import compose_config
    from jevons.framework.data.loader import make_dataloader
    from jevons.framework.optim import as_optimization, default_optimizer
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, overrides)
    family = manager.family(config.family)
    pl.seed_everything(config.seed, verbose=False)
    model = family.build_model(config)
    objective = family.default_objective(model, config)
    dataset = family.build_dataset(config, "train")
    loader = make_dataloader(dataset, default_batch_sampler(dataset, config, "train"), config.data.num_workers)
    optimization = as_optimization(default_optimizer(model, config), config)
    return config, model, objective, loader, optimization


def plain_loop(overrides: list[str], steps: int) -> StepTimes:
    from jevons.framework import distributed

    timer = StepTimes()
    with distributed.initialized(ParallelConfig()):
        config, model, objective, loader, optimization = _components(overrides)
        done = 0
        while done < steps:
            for loaded in loader:
                out = train_step(model, objective, optimization, loaded.data, config.trainer.gradient_clip_val)
                out.loss.item()  # as a logger would read it
                timer.tick()
                done += 1
                if done == steps:
                    break
    return timer


def plain_lightning(overrides: list[str], steps: int) -> StepTimes:
    import pytorch_lightning as pl

    from jevons.framework import distributed

    timer = StepTimes()

    class Module(pl.LightningModule):
        def __init__(self, model, objective, optimization) -> None:
            super().__init__()
            self.model, self.objective, self.optimization = model, objective, optimization

        def training_step(self, batch, batch_idx):
            out = self.objective(self.model, batch.data)
            self.log("train/loss", out.loss, prog_bar=True)
            return out.loss

        def configure_optimizers(self):
            scheduler = {"scheduler": self.optimization.scheduler, "interval": "step"}
            return {"optimizer": self.optimization.optimizer, "lr_scheduler": scheduler}

    class Tick(pl.Callback):
        def on_train_batch_end(self, *args):
            timer.tick()

    with distributed.initialized(ParallelConfig()):
        config, model, objective, loader, optimization = _components(overrides)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            gradient_clip_val=config.trainer.gradient_clip_val,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=[Tick()],
        )
        trainer.fit(Module(model, objective, optimization), loader)
    return timer


def jevons(overrides: list[str], steps: int) -> StepTimes:
    import pytorch_lightning as pl

    from jevons.framework.plugin import hookimpl
    from jevons.framework.run import train

    timer = StepTimes()

    class Tick(pl.Callback):
        def on_train_batch_end(self, *args):
            timer.tick()

    class Timing:
        @hookimpl
        def register_callbacks(self, register, config):
            register(Tick())

    with tempfile.TemporaryDirectory() as runs:
        train(
            [*overrides, f"trainer.max_steps={steps}", f"run.root={runs}", "plugins=[timing]"],
            plugins=[("timing", Timing())],
            autoload=False,
        )
    return timer


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, steps, warmup = (1, 30, 10) if args.quick else (4, 160, 20)
    overrides = ["recipe=llm_tiny"]
    arms = {"jevons": jevons, "plain_loop": plain_loop, "plain_lightning": plain_lightning}
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(rounds):
        order = list(arms) if round_index % 2 == 0 else list(reversed(arms))  # cancel drift across a round
        for name in order:
            samples[name] += arms[name](overrides, steps).steady(warmup)
            print(
                f"round {round_index + 1}/{rounds} {name}: median {1000 * median(samples[name]):.1f} ms/step",
                flush=True,
            )

    medians = {name: median(times) for name, times in samples.items()}
    figures = {
        "step_time_ratio_vs_plain_loop": medians["jevons"] / medians["plain_loop"],
        "step_time_ratio_vs_plain_lightning": medians["jevons"] / medians["plain_lightning"],
        "plain_lightning_ratio_vs_plain_loop": medians["plain_lightning"] / medians["plain_loop"],
        **{f"median_step_ms_{name}": 1000 * value for name, value in medians.items()},
    }
    details = {
        "rounds": rounds,
        "steps_per_arm_per_round": steps,
        "warmup_steps_dropped": warmup,
        "steps_measured": {name: len(times) for name, times in samples.items()},
    }
    write_result("framework_overhead", args.quick, figures, TARGETS, details)


if __name__ == "__main__":
    main()
