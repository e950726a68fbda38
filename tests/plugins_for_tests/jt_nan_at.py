"""Make the model's output NaN on one rank at given training steps (1-based, like global_step after it)."""

import json
import os
from dataclasses import dataclass, field

from jevons.framework.plugin import hookimpl


@dataclass
class NanAtConfig:
    steps: list = field(default_factory=list)
    rank: int = 1


@hookimpl
def register_config(register):
    register("jt_nan_at", NanAtConfig)


@hookimpl
def modify_model(model, config):
    import torch
    import torch.distributed as dist

    cfg = config.jt_nan_at
    calls = {"train": 0}

    def poison(module, inputs, output):
        if not module.training or not torch.is_grad_enabled():
            return output
        calls["train"] += 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        if calls["train"] in cfg.steps and rank == cfg.rank:
            return output * float("nan")
        return output

    model.register_forward_hook(poison)


@hookimpl
def register_callbacks(register, config):
    import pytorch_lightning as pl
    import torch.distributed as dist

    class Watch(pl.Callback):
        """Per rank: which steps were skipped, and a weight checksum before and after every step."""

        def __init__(self):
            self.records = []

        def on_train_batch_start(self, trainer, pl_module, *args):
            self.before = sum(float(p.detach().double().sum()) for p in pl_module.model.parameters())

        def on_train_batch_end(self, trainer, pl_module, *args):
            after = sum(float(p.detach().double().sum()) for p in pl_module.model.parameters())
            self.records.append({"step": trainer.global_step, "unchanged": after == self.before})

        def on_train_end(self, trainer, pl_module):
            rank = dist.get_rank() if dist.is_initialized() else 0
            path = os.path.join(trainer.default_root_dir, f"nan-rank{rank}.json")
            with open(path, "w") as handle:
                json.dump({"skipped": pl_module.skipped_steps, "steps": self.records}, handle)

    register(Watch())
