"""Block-sparse attention: every query block attends only to the key blocks its mask keeps.

One op, three paths with one signature,
``(q, k, v, block_mask, block_size, scale=None) -> out``:

* ``q, k, v``: ``(B, H, S, D)``, tokens already in the order that makes
  blocks local (the plugin reorders video tokens into tiles);
* ``block_mask``: ``(B, H, ceil(S / block_size), ceil(S / block_size))`` bool,
  True where a query block attends to a key block; the last block may be
  ragged (``S`` need not be a multiple of ``block_size``); every query block
  must keep at least one key block.

Paths:

* :func:`block_sparse_attention_reference` — dense attention with the block
  mask expanded to tokens: the ground truth, O(S^2) time and memory.
* :func:`block_sparse_attention_gather` — the CPU training path: the kept key
  and value blocks of every query block are gathered into a dense
  ``(kept * block_size)`` context and attended with SDPA; time and memory
  scale with the density; autograd gives the backward (gather's backward is a
  scatter-add).
* :func:`block_sparse_attention_flex` — PyTorch FlexAttention with a
  ``BlockMask`` built from the same mask: forward and backward on CUDA (the
  GPU baseline), forward only on the CPU (torch 2.13 has no CPU backward).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def num_blocks(length: int, block_size: int) -> int:
    return -(-length // block_size)


def check_block_mask(q: torch.Tensor, block_mask: torch.Tensor, block_size: int) -> None:
    """Shape and non-empty rows; a query block with no key block would have no softmax to take."""
    batch, heads, length, _ = q.shape
    n = num_blocks(length, block_size)
    if block_mask.shape != (batch, heads, n, n) or block_mask.dtype != torch.bool:
        raise ValueError(
            f"block_mask must be bool of shape {(batch, heads, n, n)} for S={length}, block_size={block_size}; "
            f"got {block_mask.dtype} {tuple(block_mask.shape)}."
        )
    if not block_mask.any(-1).all():
        raise ValueError("every query block must keep at least one key block (keep the diagonal).")


def expand_block_mask(block_mask: torch.Tensor, block_size: int, length: int) -> torch.Tensor:
    """The token-level ``(B, H, S, S)`` mask of a block mask (the ragged last block cut to ``S``)."""
    tokens = block_mask.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
    return tokens[..., :length, :length]


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    check_block_mask(q, block_mask, block_size)
    mask = expand_block_mask(block_mask, block_size, q.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _blocked(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(B, H, S, D)`` zero-padded to whole blocks: ``(B, H, n, block_size, D)``."""
    length = x.shape[-2]
    pad = num_blocks(length, block_size) * block_size - length
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.unflatten(-2, (-1, block_size))


def kept_blocks(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block, the kept key blocks' indices in ascending order, padded to the row with the most:
    ``indices (B, H, n, kmax)`` (padding repeats a kept index) and ``counts (B, H, n)``."""
    counts = block_mask.sum(-1)
    width = int(counts.max())
    n = block_mask.shape[-1]
    # Kept blocks first, each group in ascending order: sort keys of kept blocks are their index, others n + index.
    keys = torch.where(block_mask, 0, n) + torch.arange(n, device=block_mask.device)
    indices = keys.argsort(dim=-1)[..., :width]
    first = indices[..., :1].expand_as(indices)
    indices = torch.where(torch.arange(width, device=block_mask.device) < counts[..., None], indices, first)
    return indices, counts


class _GatherRows(torch.autograd.Function):
    """``rows.index_select(0, index)``, whose backward is one ``index_add_``: advanced indexing's backward
    (``index_put`` with accumulate) measured 1.5x slower here, a third of the whole forward+backward."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = rows.shape[0]
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.num_rows, *grad.shape[1:]).index_add_(0, index, grad), None


def block_sparse_attention_gather(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    check_block_mask(q, block_mask, block_size)
    batch, heads, length, dim = q.shape
    n = num_blocks(length, block_size)
    indices, counts = kept_blocks(block_mask)  # (B, H, n, kmax)
    width = indices.shape[-1]
    rows = batch * heads * n  # one attention problem per query block
    # Row r of the blocked keys is key block r % n of (batch, head) r // n.
    flat = (
        torch.arange(batch * heads, device=q.device)[:, None, None] * n + indices.view(batch * heads, n, width)
    ).flatten()
    keys = _GatherRows.apply(_blocked(k, block_size).reshape(rows, block_size * dim), flat)
    values = _GatherRows.apply(_blocked(v, block_size).reshape(rows, block_size * dim), flat)
    keys, values = (x.view(rows, 1, width * block_size, dim) for x in (keys, values))
    mask = None
    if length % block_size or bool((counts != width).any()):
        # A key token is real if its block is kept (not row padding) and it lies before S (not block padding).
        token = indices[..., None] * block_size + torch.arange(block_size, device=q.device)
        real = (torch.arange(width, device=q.device)[:, None] < counts[..., None, None]) & (token < length)
        mask = real.view(rows, 1, 1, width * block_size)
    queries = _blocked(q, block_size).reshape(rows, 1, block_size, dim)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)  # (rows, 1, block, D)
    return out.view(batch, heads, n * block_size, dim)[:, :, :length]


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_block_mask(block_mask: torch.Tensor, block_size: int, length: int) -> BlockMask:
    """A FlexAttention ``BlockMask`` keeping exactly the blocks of ``block_mask`` (tokens past ``S`` masked)."""
    from torch.nn.attention.flex_attention import BlockMask

    indices, counts = kept_blocks(block_mask)
    n = block_mask.shape[-1]
    full = torch.zeros(*block_mask.shape[:-1], n, dtype=torch.int32, device=block_mask.device)
    full[..., : indices.shape[-1]] = indices.to(torch.int32)
    return BlockMask.from_kv_blocks(counts.to(torch.int32), full, BLOCK_SIZE=block_size, seq_lengths=(length, length))


def block_sparse_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Compiled FlexAttention (its eager form was measured wrong here for block sizes other than 128)."""
    check_block_mask(q, block_mask, block_size)
    mask = flex_block_mask(block_mask, block_size, q.shape[-2])
    return _compiled_flex_attention()(
        q, k, v, block_mask=mask, scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    )
