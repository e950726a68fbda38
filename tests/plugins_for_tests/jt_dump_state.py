"""At the end of training, save each rank's parameters (with their TP partition), last gradients,
optimizer state and the bytes it holds of each (FSDP's shards as this rank's pieces)."""

import os

from jevons.framework.plugin import hookimpl


@hookimpl
def register_callbacks(register, config):
    import pytorch_lightning as pl
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    def local(tensor):
        return tensor.to_local() if isinstance(tensor, DTensor) else tensor

    def nbytes(tensors):
        return sum(local(t).numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    class Dump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            params = list(pl_module.model.named_parameters())
            shards = {
                name: (
                    p.partition_dim if getattr(p, "tensor_model_parallel", False) else None,
                    local(p).detach().clone(),
                )
                for name, p in params
            }
            rank = dist.get_rank() if dist.is_initialized() else 0
            state = trainer.optimizers[0].state_dict()["state"]
            optimizer = {k: {n: local(v) for n, v in s.items()} for k, s in state.items()}
            held = {
                "params": nbytes(p for _, p in params),
                "grads": nbytes(p.grad for _, p in params if p.grad is not None),
                "optimizer": nbytes(v for s in optimizer.values() for v in s.values() if v.ndim > 0),
            }
            grads = {name: local(p.grad).detach().clone() for name, p in params if p.grad is not None}
            torch.save(
                {"params": shards, "grads": grads, "optimizer": optimizer, "bytes": held},
                os.path.join(trainer.default_root_dir, f"state-rank{rank}.pt"),
            )

    register(Dump())
