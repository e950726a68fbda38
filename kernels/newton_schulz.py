"""Newton–Schulz orthogonalisation: the op at the heart of Muon, reference implementation.

Given ``G = U S V^T``, five iterations of the quintic
``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and
``(a, b, c) = (3.4445, -4.7750, 2.0315)`` map every singular value into about
[0.7, 1.2], i.e. ``X ~ U S' V^T`` with ``S' ~ I`` (Jordan et al., 2024, "Muon:
An optimizer for hidden layers in neural networks"; the coefficients maximise
the slope at zero rather than converge exactly, which training does not mind).

Inputs are ``(..., m, n)``: leading dimensions are a batch of independent
matrices (a stack of experts, or equal-shaped layers stacked to share one
batched matmul). Wide orientation is used internally (``m <= n``) so the Gram
matrix ``A`` is the small one. Computation runs in ``compute_dtype`` (float32
when not given); the result has the input's dtype. Which dtype is faster on a
machine is measured by dispatch, not guessed from its CPU flags: an AMD EPYC
without AMX multiplies bfloat16 fast too (:mod:`jevons.kernels.dispatch`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

COEFFICIENTS = (3.4445, -4.7750, 2.0315)
STEPS = 5
EPS = 1e-7


def newton_schulz_reference(
    G: torch.Tensor,
    steps: int = STEPS,
    coefficients: tuple[float, float, float] = COEFFICIENTS,
    eps: float = EPS,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximately orthogonalise each trailing ``(m, n)`` matrix of ``G`` (plain PyTorch)."""
    return iterate(G, steps, coefficients, eps, compute_dtype, gram=_gram, gram_update=_gram_update)


def iterate(
    G: torch.Tensor,
    steps: int,
    coefficients: tuple[float, float, float],
    eps: float,
    compute_dtype: torch.dtype | None,
    gram: Callable[[torch.Tensor], torch.Tensor],
    gram_update: Callable[[torch.Tensor, float, float], torch.Tensor],
) -> torch.Tensor:
    """The iteration, with its two symmetric products supplied: ``gram(X) = X X^T`` and
    ``gram_update(A, b, c) = b A + c A A``. Implementations differ only in those."""
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs matrices, got a tensor of shape {tuple(G.shape)}")
    a, b, c = coefficients
    tall = G.size(-2) > G.size(-1)
    X = G.reshape(-1, *G.shape[-2:]).to(compute_dtype or torch.float32)  # (batch, m, n)
    if tall:
        X = X.mT
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) + eps)).contiguous()  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = gram(X)  # (batch, m, m), m <= n: the small Gram matrix
        B = gram_update(A, b, c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    if tall:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype)


def _gram(X: torch.Tensor) -> torch.Tensor:
    return X @ X.mT


def _gram_update(A: torch.Tensor, b: float, c: float) -> torch.Tensor:
    return torch.baddbmm(A, A, A, beta=b, alpha=c)
