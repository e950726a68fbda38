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
orthogonalised per expert in one batched call; convolution kernels
``(out, in, *k)`` are flattened to ``(out, in * prod(k))``; equal-shaped
matrices are stacked into one batched Newton–Schulz call; and tensor-parallel
shards go through :class:`TensorParallelSeam`: orthogonalising a local shard
alone would be a different (wrong) update, so the full matrix is gathered,
orthogonalised, and the local shard kept.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch
from torch.optim.adamw import adamw as functional_adamw

MATRIX, FLATTEN, STACK = "matrix", "flatten", "stack"
"""How a Muon parameter becomes matrices: as is (2-D), conv kernels flattened, or a stack of experts."""


def lr_scale(rule: str, rows: int, cols: int) -> float:
    if rule == "keller":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "moonlight":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown lr_scale rule {rule!r}")


def as_matrices(tensor: torch.Tensor, view: str) -> torch.Tensor:
    """The ``(..., rows, cols)`` matrices Newton-Schulz sees for a parameter-shaped tensor."""
    if view == FLATTEN:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor  # MATRIX: (rows, cols); STACK: (..., rows, cols)


class TensorParallelSeam:
    """Where Muon meets tensor parallelism: orthogonalise the full matrix, keep the local shard.

    A parameter is sharded when Megatron marked it (``tensor_model_parallel``
    and ``partition_dim``) and the TP group has more than one rank.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group

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
        seam: Optional[TensorParallelSeam] = None,
    ) -> None:
        defaults = dict(
            lr=1e-3, weight_decay=0.0, use_muon=False, momentum=0.95, nesterov=True, ns_steps=5,
            lr_scale="moonlight", view=MATRIX, betas=(0.9, 0.95), eps=1e-8,
        )
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if as_matrices(p, group["view"]).ndim < 2:
                        raise ValueError(f"Muon needs matrices; a parameter of shape {tuple(p.shape)} is not one")
        self.newton_schulz = newton_schulz
        self.seam = seam or TensorParallelSeam()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["use_muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        beta = group["momentum"]
        grads = [p.grad for p in params]
        buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - beta)
        updates = torch._foreach_lerp(grads, buffers, beta) if group["nesterov"] else buffers
        orthogonal = self._orthogonalise(params, updates, group)
        lr, decay = group["lr"], group["weight_decay"]
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for p, o in zip(params, orthogonal):
            p.add_(o, alpha=-lr * self._scale(p, group))

    def _scale(self, p: torch.Tensor, group: dict[str, Any]) -> float:
        rows, cols = as_matrices(p, group["view"]).shape[-2:]
        if self.seam.is_sharded(p):  # the full matrix's shape sets the scale, as at TP=1
            if p.partition_dim == 0:
                rows = rows * self.seam.world_size()
            else:
                cols = cols * self.seam.world_size()
        return lr_scale(group["lr_scale"], rows, cols)

    def _orthogonalise(self, params: list[torch.Tensor], updates: list[torch.Tensor], group: dict[str, Any]) -> list[torch.Tensor]:
        """NS of every update; unsharded ones of equal shape share one batched call."""
        view, steps = group["view"], group["ns_steps"]
        result: list[Optional[torch.Tensor]] = [None] * len(params)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (p, u) in enumerate(zip(params, updates)):
            if self.seam.is_sharded(p):
                full = self.seam.gather(u, p.partition_dim)
                result[i] = self.seam.local(self._ns(full, view, steps), p.partition_dim)
            else:
                by_shape[tuple(u.shape)].append(i)
        for shape, indices in by_shape.items():
            if len(indices) == 1:
                result[indices[0]] = self._ns(updates[indices[0]], view, steps)
                continue
            stacked = torch.stack([as_matrices(updates[i], view) for i in indices])  # (n, ..., rows, cols)
            orthogonal = self.newton_schulz(stacked, steps=steps)
            for j, i in enumerate(indices):
                result[i] = orthogonal[j].reshape(shape)
        return result  # type: ignore[return-value]

    def _ns(self, update: torch.Tensor, view: str, steps: int) -> torch.Tensor:
        return self.newton_schulz(as_matrices(update, view), steps=steps).reshape(update.shape)

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
            [p.grad for p in params],
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
        dict(params=params, use_muon=True, view=view, lr=muon_lr, weight_decay=muon_weight_decay,
             momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, lr_scale=rule)
        for view, params in by_view.items()
    ]
    for params, decay in ((list(decayed), weight_decay), (list(undecayed), 0.0)):
        if params:
            groups.append(dict(params=params, use_muon=False, lr=lr, weight_decay=decay, betas=betas, eps=eps))
    return groups
