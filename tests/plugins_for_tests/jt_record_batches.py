"""Append, per rank and step, the dataset indices each training step consumed."""

import json
import os

from jevons.framework.plugin import hookimpl


@hookimpl
def register_callbacks(register, config):
    import pytorch_lightning as pl
    import torch.distributed as dist

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            rank = dist.get_rank() if dist.is_initialized() else 0
            line = json.dumps({"step": trainer.global_step, "indices": pl_module.last_batch_indices})
            with open(os.path.join(trainer.default_root_dir, f"batches-rank{rank}.jsonl"), "a") as handle:
                handle.write(line + "\n")

    register(Record())
