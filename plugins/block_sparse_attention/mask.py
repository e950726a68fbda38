"""Adaptive block-sparse masks (Video-BLADE's ASA) and the tile order that makes video blocks local.

* :func:`tile_order`: a permutation of a ``(frames, height, width)`` token grid
  that lists the tokens of each ``tile`` (e.g. 4 x 4 x 4 = 64 tokens) one after
  another, so a block of consecutive tokens is a spatio-temporal cube rather
  than a strip of one row (as in Sliding Tile Attention and FastVideo's VSA).
* :func:`adaptive_block_mask`: per (batch, head), the importance of each key
  block to each query block from mean-pooled queries and keys in fp32
  (``softmax(q_pool k_pool^T / sqrt(d))``); each query block keeps the fewest
  key blocks whose importance covers ``coverage`` of the mass, clamped to
  ``[min_density, max_density]`` of the blocks; its own (diagonal) block is
  always kept and counted. No gradient flows through the mask.
"""

from __future__ import annotations

import math

import torch

from jevons.kernels.block_sparse_attention import _blocked, num_blocks


def tile_order(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> torch.Tensor:
    """Token indices of a row-major ``grid`` in tile-major order; edge tiles may be smaller."""
    frames, height, width = grid
    index = torch.arange(frames * height * width).view(frames, height, width)
    tf, th, tw = tile
    pieces = [
        index[f : f + tf, h : h + th, w : w + tw].flatten()
        for f in range(0, frames, tf)
        for h in range(0, height, th)
        for w in range(0, width, tw)
    ]
    return torch.cat(pieces)


def tile_for_block(grid: tuple[int, int, int], block_size: int) -> tuple[int, int, int]:
    """A near-cubic tile of up to ``block_size`` tokens: factors of two spread over width, height, time.

    Stops when no factor of two is left (a block size that is not a power of two) or the grid is
    covered; a block then spans parts of neighbouring tiles, still in tile order."""
    tile = [1, 1, 1]
    remaining = block_size
    axis = 2
    while remaining % 2 == 0 and any(tile[a] * 2 <= grid[a] for a in range(3)):
        if tile[axis] * 2 <= grid[axis]:
            tile[axis] *= 2
            remaining //= 2
        axis = (axis - 1) % 3
    return tile[0], tile[1], tile[2]


@torch.no_grad()
def adaptive_block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    coverage: float = 0.95,
    min_density: float = 0.0,
    max_density: float = 1.0,
) -> torch.Tensor:
    """``(B, H, n, n)`` bool mask from ``q, k`` of shape ``(B, H, S, D)`` (see the module docstring)."""
    length, dim = q.shape[-2], q.shape[-1]
    n = num_blocks(length, block_size)
    counts = torch.full((n,), float(block_size), device=q.device)
    counts[-1] = length - (n - 1) * block_size  # the ragged last block is a mean over its real tokens
    pooled_q = _blocked(q.float(), block_size).sum(-2) / counts[:, None]
    pooled_k = _blocked(k.float(), block_size).sum(-2) / counts[:, None]
    importance = torch.softmax(pooled_q @ pooled_k.transpose(-1, -2) / math.sqrt(dim), dim=-1)  # (B, H, n, n)
    diagonal = torch.eye(n, dtype=torch.bool, device=q.device)
    # The diagonal first, then by importance: the cumulative mass counts the diagonal's share.
    order = torch.where(diagonal, importance + 2.0, importance).argsort(dim=-1, descending=True)
    mass = importance.gather(-1, order).cumsum(-1)
    keep = (mass < coverage).sum(-1) + 1  # the fewest blocks reaching the coverage
    low = max(1, math.ceil(min_density * n))
    high = max(low, math.floor(max_density * n))
    keep = keep.clamp(low, high)
    ranked = torch.arange(n, device=q.device) < keep[..., None]
    return torch.zeros_like(ranked).scatter(-1, order, ranked)
