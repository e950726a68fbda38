"""At the end of training, save each rank's parameters (with their TP partition) and optimizer state."""

import os

from jevons.framework.plugin import hookimpl


@hookimpl
def register_callbacks(register, config):
    import pytorch_lightning as pl
    import torch
    import torch.distributed as dist

    class Dump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            shards = {
                name: (p.partition_dim if getattr(p, "tensor_model_parallel", False) else None, p.detach().clone())
                for name, p in pl_module.model.named_parameters()
            }
            rank = dist.get_rank() if dist.is_initialized() else 0
            optimizer = trainer.optimizers[0].state_dict()
            torch.save(
                {"params": shards, "optimizer": optimizer["state"]},
                os.path.join(trainer.default_root_dir, f"state-rank{rank}.pt"),
            )

    register(Dump())
