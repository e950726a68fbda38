"""Newton–Schulz with a Triton kernel for the two symmetric products of each iteration.

Both Gram products of an iteration are symmetric: ``A = X X^T`` and
``B = c A A^T + b A`` (``A`` is symmetric). The kernel computes only the
upper-triangular tiles of ``alpha * Y Y^T + beta * C`` and mirrors each off-
diagonal tile, so those two matmuls cost about half their dense FLOPs; the
third product, ``a X + B X``, is a plain ``baddbmm``. The same trick is used by
the "flash Newton-Schulz" kernels (Boissin et al., 2025) and Dion's Muon
implementation. Batched over a leading dimension (expert stacks, stacked
layers).

Correctness is tested on the CPU under ``TRITON_INTERPRET=1`` against
:func:`jevons.kernels.newton_schulz.newton_schulz_reference`; speed is measured
on a GPU by ``benchmarks/gpu_check.py`` and decides whether dispatch prefers it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.newton_schulz import COEFFICIENTS, EPS, STEPS, iterate


@triton.jit
def _symmetric_product_kernel(
    Y,
    C,
    Out,
    M,
    K,
    stride_yb,
    stride_ym,
    stride_yk,
    stride_cb,
    stride_cm,
    stride_cn,
    stride_ob,
    stride_om,
    stride_on,
    alpha,
    beta,
    HAS_C: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK x BLOCK) tile of ``alpha * Y @ Y^T (+ beta * C)``, upper triangle only, mirrored."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    batch = tl.program_id(2)
    if pid_n < pid_m:
        return
    rows = pid_m * BLOCK + tl.arange(0, BLOCK)
    cols = pid_n * BLOCK + tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        left = tl.load(
            Y + batch * stride_yb + rows[:, None] * stride_ym + k[None, :] * stride_yk,
            mask=(rows[:, None] < M) & (k[None, :] < K),
            other=0.0,
        )
        right = tl.load(
            Y + batch * stride_yb + cols[None, :] * stride_ym + k[:, None] * stride_yk,
            mask=(cols[None, :] < M) & (k[:, None] < K),
            other=0.0,
        )
        acc += tl.dot(left, right)
    acc = acc * alpha
    inside = (rows[:, None] < M) & (cols[None, :] < M)
    if HAS_C:
        c = tl.load(
            C + batch * stride_cb + rows[:, None] * stride_cm + cols[None, :] * stride_cn, mask=inside, other=0.0
        )
        acc += beta * c.to(tl.float32)
    out = acc.to(Out.dtype.element_ty)
    tl.store(Out + batch * stride_ob + rows[:, None] * stride_om + cols[None, :] * stride_on, out, mask=inside)
    if pid_n != pid_m:
        tl.store(Out + batch * stride_ob + cols[None, :] * stride_om + rows[:, None] * stride_on, out, mask=inside)


def symmetric_product(
    Y: torch.Tensor, alpha: float = 1.0, C: torch.Tensor | None = None, beta: float = 0.0
) -> torch.Tensor:
    """``alpha * Y @ Y^T + beta * C`` for ``Y`` of shape ``(batch, m, k)``; the result is ``(batch, m, m)``.

    ``C`` must be symmetric: only its upper tiles are read.
    """
    batch, m, k = Y.shape
    out = torch.empty((batch, m, m), device=Y.device, dtype=Y.dtype)
    block = 32 if m <= 256 else 64
    grid = (triton.cdiv(m, block), triton.cdiv(m, block), batch)
    c = C if C is not None else out
    _symmetric_product_kernel[grid](
        Y,
        c,
        out,
        m,
        k,
        Y.stride(0),
        Y.stride(1),
        Y.stride(2),
        c.stride(0),
        c.stride(1),
        c.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        alpha,
        beta,
        HAS_C=C is not None,
        BLOCK=block,
        BLOCK_K=32,
    )
    return out


def newton_schulz_triton(
    G: torch.Tensor,
    steps: int = STEPS,
    coefficients: tuple[float, float, float] = COEFFICIENTS,
    eps: float = EPS,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Same contract as :func:`~jevons.kernels.newton_schulz.newton_schulz_reference`."""
    return iterate(
        G,
        steps,
        coefficients,
        eps,
        compute_dtype,
        gram=symmetric_product,
        gram_update=lambda A, b, c: symmetric_product(A, alpha=c, C=A, beta=b),  # A symmetric: A A = A A^T
    )
