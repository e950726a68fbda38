"""The diffusers attention processor of ``block_sparse_attention`` for Wan self-attention.

It computes queries, keys and values exactly as diffusers' ``WanAttnProcessor``
(projections, RMS norms, rotary embedding), then reorders the video tokens
into tiles, builds the adaptive block mask (no gradient) and runs the
``block_sparse_attention`` kernel op chosen by dispatch, and restores the
token order. Cross-attention to the conditioning tokens is untouched (it is a
different module, ``attn2``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from jevons.framework.activation_checkpointing import recomputing
from jevons.framework.attention import dense_attention_requested
from jevons.kernels import dispatch
from jevons.plugins.block_sparse_attention.mask import adaptive_block_mask, tile_for_block, tile_order


@dataclass
class SparsityStats:
    calls: int = 0
    kept_blocks: float = 0.0
    total_blocks: float = 0.0
    mask_seconds: float = 0.0


class BlockSparseWanProcessor:
    """Self-attention over ``frames`` latent frames of square token grids, block-sparse; ``dense``, the
    processor it replaces, serves calls inside :func:`jevons.framework.attention.dense_attention`."""

    def __init__(
        self,
        block_size: int,
        coverage: float,
        min_density: float,
        max_density: float,
        frames: int,
        tile: tuple[int, int, int] | None = None,
        dense: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.dense = dense
        self.block_size, self.coverage = block_size, coverage
        self.min_density, self.max_density = min_density, max_density
        self.frames, self.tile = frames, tile
        self.stats = SparsityStats()
        self._orders: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def order_for(self, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Tile order and its inverse for ``length`` tokens, or None when they are not frames of square grids."""
        if length not in self._orders:
            side = math.isqrt(length // self.frames) if length % self.frames == 0 else 0
            if side * side * self.frames != length:
                self._orders[length] = None
            else:
                grid = (self.frames, side, side)
                order = tile_order(grid, self.tile or tile_for_block(grid, self.block_size))
                self._orders[length] = (order, order.argsort())
        return self._orders[length]

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from jevons.framework.compat import wan_self_attention_heads
        from jevons.framework.ulysses import to_head_shards, to_token_shards

        if dense_attention_requested():
            if self.dense is None:
                raise RuntimeError("block_sparse_attention: dense_attention() needs the replaced processor")
            return self.dense(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("block_sparse_attention replaces self-attention only (no encoder states, no mask).")
        query, key, value = wan_self_attention_heads(attn, hidden_states, rotary_emb)  # (B, S, H, D)
        # Under parallel.ulysses: this rank's tokens of all heads -> all tokens of its heads; the block
        # mask is then each head's own, as in one process.
        query, key, value = (to_head_shards(x) for x in (query, key, value))
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, H, S, D)
        order = self.order_for(q.shape[2])
        if order is not None:
            forward, _ = (o.to(q.device) for o in order)
            q, k, v = q[:, :, forward], k[:, :, forward], v[:, :, forward]
        started = time.perf_counter()
        mask = adaptive_block_mask(q, k, self.block_size, self.coverage, self.min_density, self.max_density)
        if not recomputing():  # a checkpointed block's rerun for backward: counted once
            self.stats.mask_seconds += time.perf_counter() - started
            self.stats.calls += 1
            self.stats.kept_blocks += float(mask.sum())
            self.stats.total_blocks += mask.numel()
        out = dispatch.get("block_sparse_attention")(q, k, v, mask, self.block_size)
        if order is not None:
            out = out[:, :, order[1].to(out.device)]
        out = to_token_shards(out.transpose(1, 2)).flatten(2).type_as(query)  # (B, S / ulysses, H * D)
        return attn.to_out[1](attn.to_out[0](out))
