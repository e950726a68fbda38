"""The Muon optimizer: Newton–Schulz-orthogonalised Nesterov momentum for hidden matrices, AdamW for the rest.

Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
networks") replaces each hidden weight matrix's update by the orthogonalised
momentum ``NS(m)``, which equalises the update's singular values. Embeddings,
output heads, gains and biases keep AdamW. One optimizer object holds both
kinds of parameter group (``use_muon``), so checkpoints, the LR schedule and
gradient clipping see one optimizer.

Update of a Muon parameter ``W`` (rows x cols) with gradient ``g``:

    m  <- beta * m + (1 - beta) * g
    u  <- g + beta * (m - g)             (Nesterov; u = m without)
    O  <- NS5(u)                         (kernels.newton_schulz, dispatched)
    W  <- W * (1 - lr * wd) - lr * s(rows, cols) * O

with ``s = sqrt(max(1, rows / cols))`` ("keller") or ``0.2 * sqrt(max(rows,
cols))`` ("moonlight": Liu et al., 2025, "Muon is Scalable for LLM Training",
which matches AdamW's update RMS so AdamW's lr and weight decay carry over).

Beyond ``torch.optim.Muon`` (2-D only): expert stacks ``(E, rows, cols)`` are
orthogonalised per expert; convolution kernels ``(out, in, *k)`` are flattened
to ``(out, in * prod(k))``; fused projections that declare their layout
(``param.fused_rows``, e.g. QKV) are orthogonalised per part; every matrix of
one shape goes through a single batched Newton–Schulz call; and tensor-parallel
shards go through :class:`TensorParallelSeam`: orthogonalising a local shard
alone would be a different (wrong) update, so the full matrix is gathered,
orthogonalised, and the local shard kept. Under FSDP (``parallel.shard``) the same holds for the
data-parallel pieces: each update is gathered whole over the data-parallel ranks, every rank
orthogonalises every matrix (redundant compute: ``shard`` times the Newton–Schulz FLOPs of one
rank's share, and one all-gather of the updates, the size of FSDP's own weight gather), and keeps
its piece. A distributed scheme (each rank orthogonalising a subset, then scattering) would divide
that compute; at Jevons' sizes the gather is simpler and exact.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch.optim.adamw import adamw as functional_adamw

from jevons.kernels import dispatch

MATRIX, FLATTEN, STACK = "matrix", "flatten", "stack"
"""How a Muon parameter becomes matrices: as is (2-D), conv kernels flattened, or a stack of experts."""


def lr_scale(rule: str, rows: int, cols: int) -> float:
    if rule == "keller":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "moonlight":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown lr_scale rule {rule!r}")


def to_matrices(tensor: torch.Tensor, view: str, fused: tuple[int, int] | None = None) -> torch.Tensor:
    """The ``(n, rows, cols)`` matrices Newton-Schulz orthogonalises for one parameter-shaped tensor.

    ``fused=(parts, unit)`` marks a 2-D weight whose rows interleave ``parts``
    matrices in runs of ``unit`` rows (a fused QKV projection laid out head by
    head: ``(heads, 3, head_dim)`` rows; a fused gate/up projection: ``(hidden,
    2)``); each part is orthogonalised on its own, as separate Q, K, V and gate,
    up projections would be (Jordan et al.'s modded-nanogpt does the same).
    """
    if view == FLATTEN:
        return tensor.reshape(1, tensor.shape[0], -1)
    if view == STACK:
        return tensor.reshape(-1, *tensor.shape[-2:])
    if fused is None:
        return tensor.unsqueeze(0)
    parts, unit = fused
    rows, cols = tensor.shape
    split = tensor.reshape(rows // (parts * unit), parts, unit, cols).transpose(0, 1)  # (parts, groups, unit, cols)
    return split.reshape(parts, rows // parts, cols)


def from_matrices(
    matrices: torch.Tensor, like: torch.Tensor, view: str, fused: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`to_matrices`: back to ``like``'s shape and layout."""
    if view == MATRIX and fused is not None:
        parts, unit = fused
        rows, cols = like.shape
        grouped = matrices.reshape(parts, rows // (parts * unit), unit, cols).transpose(0, 1)
        return grouped.reshape(rows, cols)
    return matrices.reshape(like.shape)


class TensorParallelSeam:
    """Where Muon meets tensor parallelism: orthogonalise the full matrix, keep the local shard.

    A parameter is sharded when Megatron marked it (``tensor_model_parallel``
    and ``partition_dim``) and the TP group has more than one rank.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group

    @staticmethod
    def partition_dim(param: Any) -> int:
        """The dimension Megatron split a sharded parameter along (the ``partition_dim`` it set on the tensor)."""
        return int(param.partition_dim)

    def is_sharded(self, param: torch.Tensor) -> bool:
        return bool(getattr(param, "tensor_model_parallel", False)) and self.world_size() > 1

    def world_size(self) -> int:
        if self.group is None:
            return 1
        return torch.distributed.get_world_size(self.group)

    def gather(self, shard: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [torch.empty_like(shard) for _ in range(self.world_size())]
        torch.distributed.all_gather(parts, shard.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def local(self, full: torch.Tensor, dim: int) -> torch.Tensor:
        rank = torch.distributed.get_rank(self.group)
        return full.chunk(self.world_size(), dim=dim)[rank]


def _gather_data_parallel(update: torch.Tensor) -> torch.Tensor:
    """An FSDP-sharded update (a DTensor) gathered over the data-parallel ranks; a plain one as is."""
    from torch.distributed.tensor import DTensor

    return update.full_tensor() if isinstance(update, DTensor) else update


def _like_data_parallel(orthogonal: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """This rank's FSDP piece of ``orthogonal`` when ``update`` is sharded: every rank computed the same
    whole matrix, so each keeps its piece without communicating (``src_data_rank=None``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(update, DTensor):
        return orthogonal
    return distribute_tensor(orthogonal, update.device_mesh, update.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True``, AdamW for the others.

    Group keys: ``lr``, ``weight_decay``; Muon groups also ``momentum``,
    ``nesterov``, ``ns_steps``, ``lr_scale`` and ``view``; AdamW groups
    ``betas`` and ``eps``.
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        newton_schulz: Callable[..., torch.Tensor],
        seam: TensorParallelSeam | None = None,
    ) -> None:
        defaults = {
            "lr": 1e-3,
            "weight_decay": 0.0,
            "use_muon": False,
            "momentum": 0.95,
            "nesterov": True,
            "ns_steps": 5,
            "lr_scale": "moonlight",
            "view": MATRIX,
            "betas": (0.9, 0.95),
            "eps": 1e-8,
        }
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"Muon needs matrices; a parameter of shape {tuple(p.shape)} is not one")
        self.newton_schulz = newton_schulz
        self.seam = seam or TensorParallelSeam()
        # Time spent in updates (the closure's forward and backward excluded), for the run's report.
        self.update_seconds = 0.0
        self.updates = 0

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        started, measuring = time.perf_counter(), dispatch.measuring_seconds()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["use_muon"] else self._adamw_step)(group, params)
        # Kernel dispatch's one-off measurement of a new shape class is not the update's time.
        self.update_seconds += time.perf_counter() - started - (dispatch.measuring_seconds() - measuring)
        self.updates += 1
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        beta = group["momentum"]
        grads = [p.grad for p in params if p.grad is not None]  # all of them: step passes those with a gradient
        buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - beta)
        updates = list(torch._foreach_lerp(grads, buffers, beta)) if group["nesterov"] else buffers
        orthogonal, scales = self._orthogonalise(params, updates, group)
        lr, decay = group["lr"], group["weight_decay"]
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for p, o, scale in zip(params, orthogonal, scales):
            p.add_(o, alpha=-lr * scale)

    def _orthogonalise(
        self, params: list[torch.Tensor], updates: list[torch.Tensor], group: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[float]]:
        """NS of every update, and each parameter's LR scale. All matrices of one shape share one
        batched call; a tensor-parallel shard is orthogonalised as part of its gathered full matrix."""
        view, steps, rule = group["view"], group["ns_steps"], group["lr_scale"]
        fulls, mats = [], []
        for p, u in zip(params, updates):
            full = _gather_data_parallel(u)
            full = self.seam.gather(full, self.seam.partition_dim(p)) if self.seam.is_sharded(p) else full
            fulls.append(full)
            mats.append(to_matrices(full, view, getattr(p, "fused_rows", None)))
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, m in enumerate(mats):
            by_shape[tuple(m.shape[-2:])].append(i)
        orthogonal_mats: dict[int, torch.Tensor] = {}
        for indices in by_shape.values():
            batch = torch.cat([mats[i] for i in indices]) if len(indices) > 1 else mats[indices[0]]
            result = self.newton_schulz(batch, steps=steps)
            for i, part in zip(indices, result.split([mats[i].shape[0] for i in indices])):
                orthogonal_mats[i] = part
        orthogonal, scales = [], []
        for i, (p, full, m) in enumerate(zip(params, fulls, mats)):
            o = orthogonal_mats[i]
            o_full = from_matrices(o, full, view, getattr(p, "fused_rows", None))
            o_local = self.seam.local(o_full, self.seam.partition_dim(p)) if self.seam.is_sharded(p) else o_full
            orthogonal.append(_like_data_parallel(o_local, updates[i]))
            scales.append(lr_scale(rule, *m.shape[-2:]))
        return orthogonal, scales

    def _adamw_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        # torch's own AdamW arithmetic (decoupled weight decay), so this half is AdamW exactly.
        functional_adamw(
            params,
            [p.grad for p in params if p.grad is not None],  # all of them: step passes those with a gradient
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def parameter_groups(
    muon: Iterable[tuple[torch.Tensor, str]],
    decayed: Iterable[torch.Tensor],
    undecayed: Iterable[torch.Tensor],
    *,
    lr: float,
    muon_lr: float,
    weight_decay: float,
    muon_weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    rule: str,
    betas: tuple[float, float],
    eps: float,
) -> list[dict[str, Any]]:
    """Param groups for :class:`Muon`: one Muon group per view, AdamW with and without decay."""
    by_view: dict[str, list[torch.Tensor]] = defaultdict(list)
    for p, view in muon:
        by_view[view].append(p)
    groups: list[dict[str, Any]] = [
        {
            "params": params,
            "use_muon": True,
            "view": view,
            "lr": muon_lr,
            "weight_decay": muon_weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "lr_scale": rule,
        }
        for view, params in by_view.items()
    ]
    for params, decay in ((list(decayed), weight_decay), (list(undecayed), 0.0)):
        if params:
            groups.append(
                {"params": params, "use_muon": False, "lr": lr, "weight_decay": decay, "betas": betas, "eps": eps}
            )
    return groups
