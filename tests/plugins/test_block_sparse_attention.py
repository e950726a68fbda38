"""The block_sparse_attention plugin: tile order, adaptive masks, the Wan processor, a real run."""

from __future__ import annotations

import pytest
import torch

from jevons.framework.config.compose import compose_config
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.plugins.block_sparse_attention.mask import adaptive_block_mask, tile_for_block, tile_order
from jevons.plugins.block_sparse_attention.processor import BlockSparseWanProcessor
from jevons.recipes.diffusion.conditioning import Condition

SMALL = ["recipe=image_tiny", "model.num_layers=1", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=32"]


def test_tile_order_puts_each_tile_in_one_block() -> None:
    grid, tile = (4, 8, 8), (2, 4, 4)
    order = tile_order(grid, tile)
    assert sorted(order.tolist()) == list(range(256))
    f, h, w = order // 64, order // 8 % 8, order % 8
    for block in range(8):  # 32 consecutive tokens: one 2 x 4 x 4 cube
        part = slice(32 * block, 32 * (block + 1))
        assert {len(set(x[part].tolist())) for x in (f, h, w)} == {2, 4}
        assert max(f[part]) - min(f[part]) == 1 and max(h[part]) - min(h[part]) == 3
    assert tile_for_block((16, 16, 16), 64) == (4, 4, 4)
    assert tile_for_block((1, 8, 8), 64) == (1, 8, 8)
    assert tile_for_block((16, 16, 16), 48) == (2, 2, 4)  # not a power of two: the factors of two it has
    assert tile_for_block((1, 2, 2), 64) == (1, 2, 2)  # a grid smaller than a block


def test_adaptive_mask_keeps_the_diagonal_covers_the_mass_and_respects_the_clamps() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 500, 16) * 3, torch.randn(2, 2, 500, 16) * 3  # ragged: 500 = 7 x 64 + 52
    n = 8
    for coverage, low, high in ((0.9, 0.0, 1.0), (0.5, 0.25, 0.5), (1.0, 0.0, 0.375), (0.1, 0.5, 1.0)):
        mask = adaptive_block_mask(q, k, 64, coverage, low, high)
        assert mask.shape == (2, 2, n, n) and mask.diagonal(dim1=-2, dim2=-1).all()
        kept = mask.sum(-1)
        assert kept.min() >= max(1, -(-low * n // 1)) and kept.max() <= max(1, int(high * n))
    # Without clamps, the kept blocks carry the coverage and one block fewer would not.
    counts = torch.tensor([64] * 7 + [52], dtype=torch.float32)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., 64 * i : 64 * i + int(c), :].mean(-2) for i, c in enumerate(counts)], -2)

    importance = torch.softmax(pooled(q) @ pooled(k).transpose(-1, -2) / 4.0, -1)
    mask = adaptive_block_mask(q, k, 64, 0.9)
    covered = (importance * mask).sum(-1)
    assert (covered >= 0.9 - 1e-6).all()
    smallest_kept = torch.where(mask & ~torch.eye(n, dtype=torch.bool), importance, 2.0).amin(-1)
    assert ((covered - smallest_kept < 0.9) | (mask.sum(-1) == 1)).all()


def test_no_gradient_flows_through_the_mask() -> None:
    q = torch.randn(1, 1, 128, 8, requires_grad=True)
    assert not adaptive_block_mask(q, q, 32).requires_grad


def _model(manager, *overrides):
    from jevons.recipes.diffusion.family import DiffusionFamily

    torch.manual_seed(0)
    return DiffusionFamily().build_model(compose_config(manager, [*SMALL, *overrides]))


def test_the_processor_at_full_density_equals_dense_attention() -> None:
    manager = PluginManager.load(autoload=False)
    model = _model(manager)
    noisy, sigma, labels = (
        torch.randn(3, 1, 1, 16, 16),
        torch.rand(3),
        Condition(labels=torch.tensor([[1, 10], [2, 10], [3, 10]])),
    )
    dense = model(noisy, sigma, labels)
    attention = model.transformer.blocks[0].attn1
    attention.set_processor(BlockSparseWanProcessor(16, 1.0, 1.0, 1.0, frames=1))
    torch.testing.assert_close(model(noisy, sigma, labels), dense, atol=1e-5, rtol=1e-5)
    attention.set_processor(BlockSparseWanProcessor(16, 0.5, 0.25, 0.5, frames=1))
    sparse = model(noisy, sigma, labels)
    assert not torch.allclose(sparse, dense, atol=1e-3)
    stats = attention.processor.stats
    assert stats.calls == 1 and 0.25 <= stats.kept_blocks / stats.total_blocks <= 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("block_sparse_attention.max_density=1.5", "densities"),
        ("block_sparse_attention.tile=[2,2,2]", "product"),
        ("block_sparse_attention.coverage=0", "coverage"),
    ],
)
def test_bad_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        compose_config(PluginManager.load(autoload=False), [*SMALL, "plugins=[block_sparse_attention]", override])


def test_llm_is_refused() -> None:
    with pytest.raises(UsageError, match="block_sparse_attention"):
        compose_config(PluginManager.load(autoload=False), ["recipe=llm_tiny", "plugins=[block_sparse_attention]"])


def test_a_short_video_run_trains_sparse_and_reports_its_density(train, run_root) -> None:
    result = train(
        [
            *SMALL,
            "data.source=moving-digits",
            "data.frames=4",
            "data.resolution=16",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "sample.steps=2",
            "sample.grid_rows=1",
            "sample.fd_samples=0",
            "trainer.progress_bar=false",
            "plugins=[block_sparse_attention]",
            "block_sparse_attention.block_size=16",
            "block_sparse_attention.max_density=0.5",
            f"run.root={run_root}",
        ]
    )
    figures = result.summary["plugin_figures"]["block_sparse_attention"]
    assert 0.0 < figures["mean_density"] <= 0.5
    # The kernels CPU training may use; which is faster per shape is measured on the machine (a busy one picks
    # reference for some shapes), so the figure names what dispatch chose, not a fixed kernel.
    assert set(figures["kernel"].split(", ")) <= {"gather", "reference"}
    assert result.summary["train_loss"] is not None
