"""Block-sparse attention: every path equals the dense reference, outputs and gradients, ragged blocks included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jevons.kernels import dispatch
from jevons.kernels.block_sparse_attention import (
    block_sparse_attention_flex,
    block_sparse_attention_gather,
    block_sparse_attention_reference,
    expand_block_mask,
    num_blocks,
)

SHAPES = [  # (S, block_size, density): whole and ragged last blocks, several densities
    (256, 64, 0.25),
    (200, 64, 0.5),
    (130, 32, 0.125),
    (96, 32, 1.0),
    (257, 64, 0.3),
]


def _inputs(length: int, block: int, density: float, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 16, generator=generator, dtype=dtype) for _ in range(3))
    n = num_blocks(length, block)
    mask = torch.rand(2, 3, n, n, generator=generator) < density
    mask |= torch.eye(n, dtype=torch.bool)
    return q, k, v, mask


def test_reference_is_dense_attention_with_the_expanded_mask() -> None:
    q, k, v, mask = _inputs(130, 32, 0.3)
    tokens = expand_block_mask(mask, 32, 130)
    assert tokens.shape == (2, 3, 130, 130) and torch.equal(tokens[..., ::32, ::32], mask)
    scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~tokens, float("-inf"))
    torch.testing.assert_close(block_sparse_attention_reference(q, k, v, mask, 32), scores.softmax(-1) @ v)


def test_full_density_is_dense_sdpa() -> None:
    q, k, v, _ = _inputs(200, 64, 1.0)
    mask = torch.ones(2, 3, 4, 4, dtype=torch.bool)
    dense = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(block_sparse_attention_reference(q, k, v, mask, 64), dense)
    torch.testing.assert_close(block_sparse_attention_gather(q, k, v, mask, 64), dense)


@pytest.mark.parametrize("length, block, density", SHAPES)
def test_gather_path_equals_the_reference_outputs_and_gradients(length: int, block: int, density: float) -> None:
    q, k, v, mask = _inputs(length, block, density)
    grads = {}
    for name, op in (("reference", block_sparse_attention_reference), ("gather", block_sparse_attention_gather)):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = op(*inputs, mask, block)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[name] = (out.detach(), *(t.grad for t in inputs))
    for ours, reference in zip(grads["gather"], grads["reference"]):
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("length, block, density", [(256, 64, 0.25), (200, 64, 0.5), (130, 32, 0.3)])
def test_flex_attention_forward_equals_the_reference(length: int, block: int, density: float) -> None:
    q, k, v, mask = _inputs(length, block, density, dtype=torch.float32)
    torch.testing.assert_close(
        block_sparse_attention_flex(q, k, v, mask, block),
        block_sparse_attention_reference(q, k, v, mask, block),
        atol=1e-5,
        rtol=1e-5,
    )


def test_bad_masks_are_refused() -> None:
    q, k, v, mask = _inputs(128, 64, 0.5)
    with pytest.raises(ValueError, match="shape"):
        block_sparse_attention_gather(q, k, v, mask[..., :1, :], 64)
    empty = mask.clone()
    empty[0, 0, 1] = False
    with pytest.raises(ValueError, match="at least one key block"):
        block_sparse_attention_gather(q, k, v, empty, 64)


def test_on_cpu_flex_attention_is_a_candidate_for_sampling_only() -> None:
    from jevons.framework.plugin_manager import PluginManager

    PluginManager.load(autoload=False)  # registers the kernels
    dispatch.force({})
    if torch.cuda.is_available():
        pytest.skip("on CUDA FlexAttention trains")
    assert [c.name for c in dispatch.candidates("block_sparse_attention", training=True)] == ["gather", "reference"]
    assert [c.name for c in dispatch.candidates("block_sparse_attention", training=False)] == [
        "flex",
        "gather",
        "reference",
    ]


@pytest.mark.parametrize("length, block, density", [(128, 32, 0.4), (100, 32, 0.5), (130, 16, 0.3)])
def test_triton_kernel_equals_the_reference_under_the_interpreter(length: int, block: int, density: float) -> None:
    from jevons.kernels.block_sparse_attention_triton import block_sparse_attention_triton

    q, k, v, mask = _inputs(length, block, density, dtype=torch.float32)
    outputs = {}
    for name, op in (("reference", block_sparse_attention_reference), ("triton", block_sparse_attention_triton)):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = op(*inputs, mask, block)
        out.square().sum().backward()  # the Triton op's backward recomputes through the gather path
        outputs[name] = (out.detach(), *(t.grad for t in inputs))
    for ours, reference in zip(outputs["triton"], outputs["reference"]):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
