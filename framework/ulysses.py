"""Ulysses sequence parallelism: tokens split over a group of ranks, attention on whole sequences of some heads.

DeepSpeed-Ulysses (Jacobs et al., 2023, "DeepSpeed Ulysses: System Optimizations
for Enabling Training of Extreme Long Sequence Transformer Models"): every rank
of a Ulysses group holds ``S / u`` of one sample's tokens and runs the block on
them; around self-attention an all-to-all trades the token split for a head
split, so each rank attends over all ``S`` tokens with ``H / u`` heads, and a
second all-to-all trades back. Per-rank attention activations fall by ``u``;
the rest of the block is token-local.

The group is Megatron-Core's context-parallel group (``parallel.ulysses`` sets
its size; Megatron's own context parallelism needs CUDA and is not used), so
Megatron's data-parallel group excludes it and Ulysses peers read the same
batch and draw the same noise. Gradients: each peer's are its tokens' share,
so they are summed over the group (the DDP strategy averages over
data-parallel x Ulysses ranks and the loss is scaled by ``u``, ``module.py``).

The model's output is gathered whole on every peer (:func:`gather_tokens`) and
every peer computes the same loss, so the gather's backward keeps this rank's
slice of the gradient rather than summing.

A sequence that ``u`` does not divide is zero-padded at the end to the next
multiple (the padding ends the last ranks' shards). The padding runs through
the token-local parts of the block and is dropped before attention (after the
first all-to-all every rank holds the whole sequence) and at the gather, so
no real token attends to it and it adds nothing to the loss or gradients: a
padded run computes what one process computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "gather_tokens",
    "recorded_length",
    "split_tokens",
    "to_head_shards",
    "to_token_shards",
    "ulysses_group",
    "ulysses_size",
]


class _Forward:
    """The unpadded sequence length of the forward in flight, recorded by :func:`split_tokens` (the split
    is the forward's first Ulysses step; attention and the gather, later in it, trim the padding to it)."""

    length: int | None = None


_forward = _Forward()


def ulysses_group() -> Any:
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_group() if parallel_state.model_parallel_is_initialized() else None


def ulysses_size() -> int:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1
    return int(parallel_state.get_context_parallel_world_size())


def _rank() -> int:
    from megatron.core import parallel_state

    return int(parallel_state.get_context_parallel_rank())


def _all_to_all(x: torch.Tensor) -> torch.Tensor:
    """Chunk ``i`` of dim 0 goes to rank ``i``; chunk ``i`` of the result came from rank ``i``."""
    x = x.contiguous()
    out = torch.empty_like(x)  # of a contiguous tensor: empty_like keeps a permuted tensor's strides
    dist.all_to_all_single(out, x, group=ulysses_group())
    return out


def _tokens_to_heads(x: torch.Tensor, u: int) -> torch.Tensor:
    b, s_local, h, d = x.shape  # (B, S/u, H, D)
    parts = x.reshape(b, s_local, u, h // u, d).permute(2, 0, 1, 3, 4)  # (u, B, S/u, H/u, D): part j to rank j
    received = _all_to_all(parts)  # (u, B, S/u, H/u, D): from rank i, its tokens of my heads
    return received.permute(1, 0, 2, 3, 4).reshape(b, u * s_local, h // u, d)


def _heads_to_tokens(x: torch.Tensor, u: int) -> torch.Tensor:
    b, s, h_local, d = x.shape  # (B, S, H/u, D)
    parts = x.reshape(b, u, s // u, h_local, d).permute(1, 0, 2, 3, 4)  # (u, B, S/u, H/u, D): tokens j to rank j
    received = _all_to_all(parts)  # (u, B, S/u, H/u, D): from rank i, my tokens of its heads
    return received.permute(1, 2, 0, 3, 4).reshape(b, s // u, u * h_local, d)


class _TokensToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, u: int) -> torch.Tensor:
        ctx.u = u
        return _tokens_to_heads(x, u)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _heads_to_tokens(grad, ctx.u), None


class _HeadsToTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, u: int) -> torch.Tensor:
        ctx.u = u
        return _heads_to_tokens(x, u)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _tokens_to_heads(grad, ctx.u), None


def to_head_shards(x: torch.Tensor) -> torch.Tensor:
    """``(B, S/u, H, D)`` local tokens of all heads -> ``(B, S, H/u, D)`` all tokens of this rank's heads,
    the padding (if any) dropped: ``S`` is the unpadded length."""
    u = ulysses_size()
    if u == 1:
        return x
    whole = _TokensToHeads.apply(x, u)  # (B, S padded to a multiple of u, H/u, D)
    return whole[:, : _checked_length(whole.shape[1], u)]


def to_token_shards(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_head_shards`: ``(B, S, H/u, D)`` -> ``(B, S/u, H, D)``, padding put back."""
    u = ulysses_size()
    return x if u == 1 else _HeadsToTokens.apply(_pad_to_multiple(x, 1, u), u)


def split_tokens(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous ``1/u`` of ``x`` along ``dim`` (the sequence), zero-padded at the end to a
    multiple of ``u`` first; the unpadded length is recorded for the rest of the forward."""
    u = ulysses_size()
    if u == 1:
        return x
    _forward.length = x.shape[dim]
    return _pad_to_multiple(x, dim, u).chunk(u, dim=dim)[_rank()]


def _checked_length(padded: int, u: int) -> int:
    """The recorded length, refused unless ``padded`` is it rounded up to a multiple of ``u`` (a length
    left by another forward would trim real tokens or keep padding, silently)."""
    length = _forward.length
    if length is None:
        raise RuntimeError("Ulysses: attention or gather before split_tokens split the sequence")
    if not padded - u < length <= padded:
        raise RuntimeError(
            f"Ulysses: the sequence split at {length} tokens, but {padded} arrived padded to a multiple of "
            f"parallel.ulysses={u}: a forward of another length ran in between (its split was not restored)"
        )
    return length


@contextmanager
def length_as(length: int | None) -> Iterator[None]:
    """The recorded length set to ``length`` inside (a checkpointed block's rerun in backward: the
    length its forward saw, whatever forwards ran since)."""
    previous, _forward.length = _forward.length, length if length is not None else _forward.length
    try:
        yield
    finally:
        _forward.length = previous


def recorded_length() -> int | None:
    """The length :func:`split_tokens` last recorded (None: no Ulysses split in this process yet)."""
    return _forward.length


def _pad_to_multiple(x: torch.Tensor, dim: int, u: int) -> torch.Tensor:
    missing = -x.shape[dim] % u
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, u: int) -> torch.Tensor:
        ctx.dim, ctx.u = dim, u
        parts = [torch.empty_like(x) for _ in range(u)]
        dist.all_gather(parts, x.contiguous(), group=ulysses_group())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # Every peer computed the same loss from the same gathered output: its slice is its tokens' gradient.
        return grad.chunk(ctx.u, dim=ctx.dim)[_rank()].contiguous(), None, None


def gather_tokens(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The whole (unpadded) sequence on every peer, from each rank's ``1/u`` along ``dim``."""
    u = ulysses_size()
    if u == 1:
        return x
    whole = _GatherTokens.apply(x, dim, u)
    return whole.narrow(dim, 0, _checked_length(whole.shape[dim], u))
