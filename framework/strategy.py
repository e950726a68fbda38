"""Lightning strategies that adopt Jevons' process groups and own the checkpoint format.

The launcher initialised ``torch.distributed`` and Megatron's ``parallel_state``
before anything was built (docs/architecture.md); these strategies never create groups.
One process: :class:`JevonsStrategy`. Several: :class:`JevonsParallelStrategy`,
Lightning's DDP wrapper with Megatron's *data-parallel* group as its process
group, so gradients are averaged across data-parallel replicas only (tensor-
parallel peers hold different shards), and metrics are reduced over that
group too; with ``parallel.shard``, :class:`JevonsShardedStrategy`, the same without the DDP wrapper.

Lightning's own checkpoint plumbing stays (loop counters, LR schedulers and
callback states come back through ``fit(ckpt_path=...)``), but what reaches the
disk is the framework's format (:mod:`jevons.framework.checkpoint`): model and
optimizer tensors through DCP, by parameter name, tensor-parallel shards as
DTensors, loaded *in place* once the optimizers exist
(``restore_checkpoint_after_setup``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from jevons.framework.checkpoint import load_checkpoint, save_checkpoint
from jevons.framework.checkpoint_dirs import step_of


class _FrameworkCheckpoints:
    """Checkpoint save/load through the framework's format; shared by both strategies."""

    config_yaml: str
    keep_last: int
    lightning_module: Any  # provided by the Lightning strategy this is mixed into
    optimizers: Any

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # optimizers must exist: their state is loaded in place

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        path = Path(filepath)
        state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        save_checkpoint(
            path.parent, step_of(path), self.lightning_module, self.optimizers, state, self.config_yaml, self.keep_last
        )

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        state = load_checkpoint(Path(checkpoint_path), self.lightning_module, self.optimizers)
        # Already loaded in place; Lightning only needs the keys to exist.
        return {**state, "state_dict": {}, "optimizer_states": []}

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True, assign: bool = False) -> None:
        """Loaded in place by :meth:`load_checkpoint`."""

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Loaded in place by :meth:`load_checkpoint`."""

    def remove_checkpoint(self, filepath: Any) -> None:
        """Rotation is the checkpoint format's job (``checkpoint.keep_last``)."""


class JevonsStrategy(_FrameworkCheckpoints, SingleDeviceStrategy):
    """A world of one process."""

    strategy_name = "jevons"

    def __init__(self, device: torch.device, config_yaml: str, keep_last: int) -> None:
        super().__init__(device=device)
        self.config_yaml = config_yaml
        self.keep_last = keep_last


class JevonsParallelStrategy(_FrameworkCheckpoints, DDPStrategy):
    """Several processes: DDP over Megatron's data-parallel group; ranks from torch.distributed."""

    strategy_name = "jevons_parallel"

    def __init__(self, device: torch.device, config_yaml: str, keep_last: int) -> None:
        from megatron.core import parallel_state

        # With parallel.ulysses, its peers too: their gradients are summed (module.py scales the loss by u).
        self.data_parallel_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        super().__init__(
            parallel_devices=[device],
            cluster_environment=LightningEnvironment(),
            process_group=self.data_parallel_group,
            broadcast_buffers=False,
        )
        self.config_yaml = config_yaml
        self.keep_last = keep_last
        self._device = device

    @property
    def root_device(self) -> torch.device:
        return self._device  # one device per process, whatever the local rank

    def setup_distributed(self) -> None:
        """Adopt the groups the launcher created: ranks come from torch.distributed, not device counts."""
        self.set_world_ranks()

    def set_world_ranks(self) -> None:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        assert self.cluster_environment is not None
        self.cluster_environment.set_global_rank(dist.get_rank())
        self.cluster_environment.set_world_size(dist.get_world_size())
        rank_zero_only.rank = dist.get_rank()  # type: ignore[attr-defined]  # Lightning sets it this way too

    @property
    def global_rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: str | Any | None = "mean") -> Any:
        """Metrics are reduced over the data-parallel group (TP peers already agree)."""
        return super().reduce(
            tensor, group=group if group is not None else self.data_parallel_group, reduce_op=reduce_op
        )


class JevonsShardedStrategy(JevonsParallelStrategy):
    """Several processes, the model already sharded by FSDP2 (:mod:`jevons.framework.sharding`): it is
    not wrapped in DDP, and FSDP reduces its gradients itself."""

    strategy_name = "jevons_sharded"

    def setup(self, trainer: Any) -> None:
        """DDP's setup without what breaks a sharded model: no ``module.to`` (``fully_shard`` placed
        the shards on the mesh's device and the build cast them for ``bf16-true``; ``Module._apply``
        swaps each DTensor parameter for a new one and drops the attributes Megatron set on it), no
        DDP wrapper, and no broadcast of rank 0's parameters outside fitting (they are shards)."""
        from pytorch_lightning.trainer.states import TrainerFn

        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        module = self.lightning_module
        if module is not None:  # what module.to() would have recorded (batches follow it to the device)
            module._device = self.root_device

    def teardown(self) -> None:
        """Lightning's teardown without moving the model and its optimizer state to the CPU, for the
        reason :meth:`setup` does not move them: ``Module._apply`` would drop Megatron's attributes,
        and a sharded model validated after ``fit`` must stay on the mesh's device."""
        assert self.cluster_environment is not None
        self.cluster_environment.teardown()
        self.precision_plugin.teardown()
        assert self.accelerator is not None
        self.accelerator.teardown()
        self.checkpoint_io.teardown()
