"""Block-sparse attention forward as one Triton kernel (FlashAttention-style, over the kept key blocks only).

One program per (query block, batch x head): it loads its query block once,
walks the indices of its kept key blocks (``kept_blocks``), and keeps the
running max, normaliser and output of an online softmax (Dao et al., 2022),
so no score matrix is written. The backward recomputes through the gather
path (:func:`~jevons.kernels.block_sparse_attention.block_sparse_attention_gather`)
and autograd; the kernel is for the forward (sampling, and the forward half
of a step).

Correctness is tested on the CPU under ``TRITON_INTERPRET=1`` against the
reference; speed against FlexAttention is measured on a GPU by
``benchmarks/gpu_check.py --only block_sparse_attention`` and decides whether
dispatch prefers it (until then it ranks below FlexAttention).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from jevons.kernels.block_sparse_attention import (
    block_sparse_attention_gather,
    check_block_mask,
    kept_blocks,
    num_blocks,
)


@triton.jit
def _forward_kernel(
    Q,
    K,
    V,
    Out,
    Indices,
    Counts,
    length,
    scale,
    stride_bh,
    stride_s,
    num_query_blocks,
    max_kept,
    BLOCK: tl.constexpr,
    DIM: tl.constexpr,
):
    query_block = tl.program_id(0)
    bh = tl.program_id(1)
    rows = query_block * BLOCK + tl.arange(0, BLOCK)
    columns = tl.arange(0, DIM)
    base = bh * stride_bh
    q = tl.load(Q + base + rows[:, None] * stride_s + columns[None, :], mask=rows[:, None] < length, other=0.0)
    running_max = tl.full((BLOCK,), float("-inf"), tl.float32)
    normaliser = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK, DIM), tl.float32)
    row_of_indices = (bh * num_query_blocks + query_block) * max_kept
    count = tl.load(Counts + bh * num_query_blocks + query_block)
    for slot in range(0, count):
        key_block = tl.load(Indices + row_of_indices + slot)
        keys = key_block * BLOCK + tl.arange(0, BLOCK)
        inside = keys < length
        k = tl.load(K + base + keys[:, None] * stride_s + columns[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(V + base + keys[:, None] * stride_s + columns[None, :], mask=inside[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(inside[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        correction = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        normaliser = normaliser * correction + tl.sum(weights, 1)
        acc = acc * correction[:, None] + tl.dot(weights.to(v.dtype), v)
        running_max = new_max
    out = acc / normaliser[:, None]
    tl.store(
        Out + base + rows[:, None] * stride_s + columns[None, :],
        out.to(Out.dtype.element_ty),
        mask=rows[:, None] < length,
    )


def block_sparse_attention_forward_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The kernel alone (no autograd). ``block_size`` and the head dimension must be powers of two >= 16."""
    check_block_mask(q, block_mask, block_size)
    batch, heads, length, dim = q.shape
    for name, value in (("block_size", block_size), ("head dimension", dim)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"the Triton kernel needs a power-of-two {name} of at least 16; got {value}.")
    n = num_blocks(length, block_size)
    indices, counts = kept_blocks(block_mask)
    q, k, v = (x.contiguous().view(batch * heads, length, dim) for x in (q, k, v))
    out = torch.empty_like(q)
    _forward_kernel[(n, batch * heads)](
        q,
        k,
        v,
        out,
        indices.to(torch.int32).contiguous(),
        counts.to(torch.int32).contiguous(),
        length,
        scale if scale is not None else 1.0 / math.sqrt(dim),
        q.stride(0),
        q.stride(1),
        n,
        indices.shape[-1],
        BLOCK=block_size,
        DIM=dim,
    )
    return out.view(batch, heads, length, dim)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_mask: torch.Tensor,
        block_size: int,
        scale: float | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(q, k, v, block_mask)
        ctx.block_size, ctx.scale = block_size, scale
        return block_sparse_attention_forward_triton(q, k, v, block_mask, block_size, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, block_mask = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_() for x in (q, k, v)]
            out = block_sparse_attention_gather(inputs[0], inputs[1], inputs[2], block_mask, ctx.block_size, ctx.scale)
            grads = torch.autograd.grad(out, inputs, grad)
        return (*grads, None, None, None)


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    return _TritonAttention.apply(q, k, v, block_mask, block_size, scale)
