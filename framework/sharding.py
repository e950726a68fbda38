"""Sharded data parallelism: FSDP2 (``fully_shard``) per transformer block, composed with Megatron TP.

FSDP (Zhao et al., 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data
Parallel"; ZeRO-3, Rajbhandari et al., 2020) splits every parameter, its gradient
and its optimizer state over the data-parallel ranks and gathers one block's
weights just before that block runs, so a rank holds ``1/shard`` of the training
state plus one block at a time. torch's FSDP2 represents each shard as a
``DTensor``; this module decides what is sharded over which ranks.

The device mesh is ``(replicate, shard, tensor)``, tensor innermost as in
Megatron-Core's rank order, so a rank's data-parallel peers in Megatron's group
are exactly its ``(replicate, shard)`` slice. Each block the family lists is
``fully_shard``-ed over that slice (HSDP when ``replicate > 1``: sharded within
a replica, all-reduced between replicas), then the root module, for the
embeddings, norms and heads outside blocks — torchtitan's layout, applied after
activation checkpointing (``docs/build_order.md``).

Megatron's tensor-parallel weights are plain tensors that already hold a TP
shard; FSDP shards that shard again along dimension 0. For a column-parallel
weight both cuts are on dimension 0, tensor-parallel outermost: the checkpoint
view (:meth:`ShardLayout.checkpoint_view`) names the whole tensor with a mesh
ordered ``(replicate, tensor, shard)`` so DCP records each rank's rows at their
true offsets, and any other layout can load them.

Gradients: FSDP averages over the data-parallel ranks, as DDP does, so the
module's token-weighted loss scaling (``module.py``) gives one process's
gradient at the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard

__all__ = ["ShardLayout", "current_layout", "gathered_root", "local_tensor", "shard_model"]


@dataclass(frozen=True)
class ShardLayout:
    """The data-parallel layout of a sharded run and the meshes that describe it."""

    replicate: int
    shard: int
    tensor: int
    data_mesh: DeviceMesh
    """What FSDP shards over: ``(replicate, shard)`` for HSDP, ``(shard,)`` otherwise."""
    checkpoint_mesh: DeviceMesh
    """``(replicate, tensor, shard)``: the nesting of the stored cuts (tensor-parallel outermost)."""

    @property
    def shard_group(self) -> Any:
        """The ranks holding disjoint pieces of one replica's FSDP-sharded tensors."""
        return self.data_mesh.get_group("shard")

    def checkpoint_view(self, tensor: DTensor, partition_dim: int | None) -> DTensor:
        """``tensor`` (an FSDP shard of a tensor-parallel shard, or of a replicated tensor) as a
        DTensor over the whole tensor, sharing this rank's storage, so DCP saves and loads it at its
        global offsets. ``partition_dim``: where Megatron cut it, None when it is not TP-sharded."""
        whole = list(tensor.shape)  # FSDP's global shape: this rank's tensor-parallel part
        if partition_dim is not None:
            whole[partition_dim] *= self.tensor
        placements = (
            Replicate(),
            Shard(partition_dim) if partition_dim is not None else Replicate(),
            Shard(0),
        )
        shape = torch.Size(whole)
        return DTensor.from_local(
            tensor.to_local(),
            self.checkpoint_mesh,
            placements,
            run_check=False,
            shape=shape,
            stride=_contiguous_strides(shape),
        )


_CURRENT: dict[str, ShardLayout] = {}
"""``"layout"``: the layout of the model this process last sharded, while its run lasts."""


def current_layout() -> ShardLayout | None:
    """The layout of the model this process last sharded (None: not a sharded run)."""
    return _CURRENT.get("layout")


def shard_model(model: torch.nn.Module, blocks: list[str], replicate: int, shard: int, precision: str) -> ShardLayout:
    """``fully_shard`` each of ``blocks``, then ``model``; returns the layout (also :func:`current_layout`).

    Parameters keep their names and the attributes Megatron and plugins set on them
    (``tensor_model_parallel``, ``partition_dim``, ``fused_rows``...): FSDP2 replaces each
    parameter by a DTensor one, so they are copied over. At ``bf16-mixed`` the gathered weights
    are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``); the sharded master
    weights and the optimizer state stay fp32; at ``bf16-true`` the model is cast before sharding.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layout = _make_layout(replicate, shard)
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16-mixed"
        else MixedPrecisionPolicy()
    )
    if precision == "bf16-true":  # Lightning's own cast would run after sharding, through Module._apply
        model.to(torch.bfloat16)
    attributes = {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}
    for name in blocks:
        fully_shard(model.get_submodule(name), mesh=layout.data_mesh, mp_policy=policy)
    fully_shard(model, mesh=layout.data_mesh, mp_policy=policy)
    for name, values in attributes.items():
        parameter = model.get_parameter(name)
        for key, value in values.items():
            setattr(parameter, key, value)
    _CURRENT["layout"] = layout
    return layout


def forget_layout() -> None:
    """The run ended: later checkpoints in this process are not sharded ones."""
    _CURRENT.pop("layout", None)


@contextmanager
def gathered_root(model: torch.nn.Module) -> Iterator[None]:
    """For a family's evaluation: the root's weights gathered, every FSDP module resharded after.

    Evaluation calls model methods other than ``forward`` (speech's ``encode``/``decode``), which
    FSDP's forward hooks do not gather for. And FSDP2 does not reshard the root after a forward
    without backward: left gathered, its copy would shadow later changes to the shards (the ema
    plugin putting the trained weights back after validating on the average).
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (its storage, not a copy); any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _make_layout(replicate: int, shard: int) -> ShardLayout:
    from jevons.framework.tensor_parallel import tensor_parallel_size

    tensor = tensor_parallel_size()
    world = dist.get_world_size()
    if replicate * shard * tensor != world:
        raise ValueError(f"replicate={replicate} x shard={shard} x tensor={tensor} != world size {world}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (replicate, shard, tensor), mesh_dim_names=("replicate", "shard", "tensor"))
    data_mesh = mesh["replicate", "shard"] if replicate > 1 else mesh["shard"]
    ranks = torch.arange(world).reshape(replicate, shard, tensor).permute(0, 2, 1)
    # Only coordinates are read from it (no collective runs on it), so it creates no process groups.
    checkpoint_mesh = DeviceMesh(device, ranks, mesh_dim_names=("replicate", "tensor", "shard"), _init_backend=False)
    return ShardLayout(replicate, shard, tensor, data_mesh, checkpoint_mesh)


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= size
    return tuple(reversed(strides))
