"""``block_sparse_attention``: adaptive block-sparse self-attention for video diffusion transformers.

Seed: Video-BLADE's Adaptive Block-Sparse Attention (ASA; Gu et al., 2025,
"BLADE: Block-Sparse Attention Meets Step Distillation for Efficient Video
Generation"): block masks built on the fly from pooled queries and keys, so
each query block attends to the few key blocks that carry its attention mass.
Designs learned from: FastVideo's Video Sparse Attention and Sliding Tile
Attention (tokens tiled into spatio-temporal cubes), PyTorch FlexAttention
block masks.

The plugin answers ``replace_attention`` for the diffusion family's
self-attention modules (``attn1``) with an attention processor
(:mod:`jevons.plugins.block_sparse_attention.processor`); cross-attention to
the conditioning tokens stays dense. The mask (:mod:`.mask`) keeps, per
query block, the fewest key blocks covering ``coverage`` of the pooled
attention mass, within ``[min_density, max_density]``, diagonal included.
The attention itself is the ``block_sparse_attention`` kernel op
(:mod:`jevons.kernels.block_sparse_attention`): a gather path on the CPU,
FlexAttention on CUDA, the dense reference for tests. The run's figures are
:mod:`jevons.plugins.block_sparse_attention.report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from jevons.framework.protocols import AttentionProcessor


@dataclass
class BlockSparseAttentionConfig:
    block_size: int = 64
    """Tokens per block (a 4 x 4 x 4 tile of latent patches at 64)."""
    coverage: float = 0.95
    """Each query block keeps the fewest key blocks whose pooled attention mass reaches this."""
    min_density: float = 0.0625
    """At least this fraction of key blocks per query block."""
    max_density: float = 0.25
    """At most this fraction of key blocks per query block."""
    tile: list[int] | None = None
    """(frames, height, width) of a tile of ``block_size`` tokens; null: near-cubic."""


PLUGIN_INFO = PluginInfo(
    families=("diffusion",),
    description="Adaptive block-sparse self-attention (Video-BLADE ASA)",
    config=BlockSparseAttentionConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "block_sparse_attention", BlockSparseAttentionConfig)
    if cfg.block_size < 1:
        raise UsageError(f"block_sparse_attention.block_size={cfg.block_size} must be positive.")
    if not 0.0 < cfg.coverage <= 1.0:
        raise UsageError(f"block_sparse_attention.coverage={cfg.coverage} must be in (0, 1].")
    if not 0.0 <= cfg.min_density <= cfg.max_density <= 1.0:
        raise UsageError(
            f"block_sparse_attention densities must satisfy 0 <= min_density ({cfg.min_density}) "
            f"<= max_density ({cfg.max_density}) <= 1."
        )
    if cfg.tile is not None:
        product = 1
        for side in cfg.tile:
            product *= side
        if len(cfg.tile) != 3 or product != cfg.block_size:
            raise UsageError(
                f"block_sparse_attention.tile={list(cfg.tile)} must be three sides whose product is "
                f"block_size={cfg.block_size}."
            )


@hookimpl
def replace_attention(
    module: torch.nn.Module, name: str, config: Config
) -> torch.nn.Module | AttentionProcessor | None:
    from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor
    from jevons.recipes.diffusion.family import DiffusionDataConfig, DiffusionModelConfig

    cfg = section(config, "block_sparse_attention", BlockSparseAttentionConfig)
    data = section(config, "data", DiffusionDataConfig)
    model = section(config, "model", DiffusionModelConfig)
    frames = max(1, data.frames // model.patch_size[0])
    tile = (cfg.tile[0], cfg.tile[1], cfg.tile[2]) if cfg.tile else None  # three sides: checked in configure
    dense = getattr(module, "processor", None)  # diffusers' own, for dense_attention() calls
    return BlockSparseWanProcessor(
        cfg.block_size, cfg.coverage, cfg.min_density, cfg.max_density, frames, tile, dense=dense
    )


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.block_sparse_attention.report import SparsityReport

    register(SparsityReport())
