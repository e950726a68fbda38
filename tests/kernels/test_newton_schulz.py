"""Newton–Schulz: the reference lands singular values in the quintic's band; the Triton kernel equals it.

The Triton kernel runs here under ``TRITON_INTERPRET=1`` (set by conftest.py
before anything imports Triton), which executes the kernel on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from jevons.kernels.newton_schulz import newton_schulz_reference

BAND = (0.65, 1.25)  # where 5 quintic steps put every singular value that is not tiny


def _mapped_singular_values(G: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sigma_i(G)`` and the value NS mapped it to, ``(U^T X V)_ii`` in G's singular basis."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    mapped = torch.diagonal(U.mT @ X.double() @ Vh.mT, dim1=-2, dim2=-1)
    return S, mapped


@pytest.mark.parametrize(
    "shape", [(48, 160), (160, 48), (96, 96), (3, 40, 72)], ids=["wide", "tall", "square", "stack"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_singular_values_land_in_the_quintic_band(shape, dtype) -> None:
    torch.manual_seed(0)
    G = torch.randn(*shape)
    X = newton_schulz_reference(G, compute_dtype=dtype)
    assert X.shape == G.shape and X.dtype == G.dtype
    S, mapped = _mapped_singular_values(G, X)
    # Square Gaussian matrices have near-zero singular values that 5 steps cannot lift; all others land.
    not_tiny = S >= 0.05 * S.amax(dim=-1, keepdim=True)
    assert not_tiny.float().mean() > 0.8
    assert ((mapped >= BAND[0]) & (mapped <= BAND[1]))[not_tiny].all(), mapped[not_tiny].aminmax()
    assert torch.linalg.svdvals(X.double()).max() <= BAND[1]
    # It is an orthogonalisation: the singular vectors stay (off-diagonal part of U^T X V is small).
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    rotated = U.mT @ X.double() @ Vh.mT
    off_diagonal = rotated - torch.diag_embed(torch.diagonal(rotated, dim1=-2, dim2=-1))
    assert off_diagonal.abs().max() < (0.02 if dtype == torch.float32 else 0.1)


def test_stacks_are_orthogonalised_independently() -> None:
    torch.manual_seed(1)
    stack = torch.randn(4, 32, 64)
    together = newton_schulz_reference(stack, compute_dtype=torch.float32)
    one_by_one = torch.stack([newton_schulz_reference(m, compute_dtype=torch.float32) for m in stack])
    assert torch.allclose(together, one_by_one, atol=1e-6)
    with pytest.raises(ValueError, match="needs matrices"):
        newton_schulz_reference(torch.randn(7))


def test_zero_update_stays_zero() -> None:
    assert torch.equal(newton_schulz_reference(torch.zeros(8, 16)), torch.zeros(8, 16))


@pytest.mark.parametrize(
    "shape", [(40, 72), (72, 40), (70, 70), (2, 33, 65)], ids=["wide", "tall", "ragged-square", "stack"]
)
def test_triton_kernel_equals_the_reference_under_the_interpreter(shape) -> None:
    from jevons.kernels.newton_schulz_triton import newton_schulz_triton, symmetric_product

    torch.manual_seed(2)
    G = torch.randn(*shape)
    expected = newton_schulz_reference(G, compute_dtype=torch.float32)
    assert torch.allclose(newton_schulz_triton(G, compute_dtype=torch.float32), expected, atol=1e-5)
    Y = torch.randn(2, 37, 50)
    C = Y @ Y.mT  # symmetric, as in the iteration
    assert torch.allclose(symmetric_product(Y), Y @ Y.mT, atol=1e-4)
    assert torch.allclose(symmetric_product(Y, alpha=0.5, C=C, beta=-2.0), 0.5 * Y @ Y.mT - 2.0 * C, atol=1e-4)
