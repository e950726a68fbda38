"""Compute kernels: a plain-PyTorch reference per op, faster paths, one dispatch point.

This package is itself a built-in plugin: it registers its implementations
through ``register_kernels`` like any third-party kernel package would, and
defines how each op is measured (its float32 reference and accuracy bound).
A loader imports its implementation only when dispatch first measures or runs
it, and only where it is available, so Triton is never imported on a machine
without CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jevons.framework.plugin import hookimpl

if TYPE_CHECKING:
    import torch

    from jevons.framework.protocols import KernelRegistrar


def _newton_schulz_reference() -> Callable[..., Any]:
    from jevons.kernels.newton_schulz import newton_schulz_reference

    return newton_schulz_reference


def _newton_schulz_triton() -> Callable[..., Any]:
    from jevons.kernels.newton_schulz_triton import newton_schulz_triton

    return newton_schulz_triton


def _cuda_with_triton() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def _block_sparse(name: str) -> Callable[[], Callable[..., Any]]:
    def load() -> Callable[..., Any]:
        from jevons.kernels import block_sparse_attention

        return getattr(block_sparse_attention, f"block_sparse_attention_{name}")

    return load


def _block_sparse_triton() -> Callable[..., Any]:
    from jevons.kernels.block_sparse_attention_triton import block_sparse_attention_triton

    return block_sparse_attention_triton


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _newton_schulz_float32(G: torch.Tensor) -> torch.Tensor:
    import torch

    from jevons.kernels.newton_schulz import newton_schulz_reference

    return newton_schulz_reference(G.float(), compute_dtype=torch.float32)


def _gaussian_like(G: torch.Tensor) -> tuple[torch.Tensor]:
    """Newton–Schulz is measured on a seeded Gaussian of the call's shape, so the error a choice is
    judged by does not depend on the momentum it happened to see first."""
    import torch

    generator = torch.Generator(device=G.device).manual_seed(0)
    return (torch.randn(G.shape, generator=generator, device=G.device).to(G.dtype),)


def _attention_float32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: Any) -> torch.Tensor:
    from jevons.kernels.block_sparse_attention import block_sparse_attention_reference

    return block_sparse_attention_reference(q.float(), k.float(), v.float(), *rest)


def _newton_schulz_examples() -> list[tuple[tuple[Any, ...], bool]]:
    """A GPT-small-width block's matrices (the shapes of the Muon issue's measurement)."""
    import torch

    shapes = [(768, 256), (256, 256), (1024, 256), (256, 1024)]
    return [((torch.randn(4, *shape),), False) for shape in shapes]


def _attention_examples() -> list[tuple[tuple[Any, ...], bool]]:
    """A 4,096-token clip, 4 heads of 64, blocks of 64 at 1/8 density (diagonal kept), to train and to sample."""
    import torch

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 4096, 64, generator=generator) for _ in range(3))
    mask = torch.rand(1, 4, 64, 64, generator=generator) < 0.11
    mask |= torch.eye(64, dtype=torch.bool)
    trainable = tuple(t.clone().requires_grad_() for t in (q, k, v))
    return [((q, k, v, mask, 64), False), ((*trainable, mask, 64), True)]


@hookimpl
def register_kernels(register: KernelRegistrar) -> None:
    from jevons.kernels.dispatch import OpSpec

    # Accuracy bounds are what the op needs, not what the candidates reach: five Newton–Schulz steps
    # in bfloat16 are about 1.2e-2 from float32, and Muon does not mind; fewer steps could not pass.
    register.define(
        "newton_schulz",
        OpSpec(_newton_schulz_float32, bound=2e-2, inputs=_gaussian_like, examples=_newton_schulz_examples),
    )
    register("newton_schulz", "reference", _newton_schulz_reference, priority=0, dtypes=("float32", "bfloat16"))
    register(
        "newton_schulz", "triton", _newton_schulz_triton, priority=-10, available=_cuda_with_triton,
        dtypes=("float32", "bfloat16"),
    )  # fmt: skip
    # Attention outputs feed the rest of the network: bfloat16's rounding (about 4e-3) passes, a wrong block does not.
    register.define(
        "block_sparse_attention",
        OpSpec(_attention_float32, bound=2e-2, examples=_attention_examples),
    )
    register("block_sparse_attention", "reference", _block_sparse("reference"), priority=0)
    register("block_sparse_attention", "gather", _block_sparse("gather"), priority=10)
    # FlexAttention has a backward on CUDA only; on the CPU it is a candidate for sampling.
    register("block_sparse_attention", "flex", _block_sparse("flex"), priority=20, trains=_cuda, compiles=True)
    register("block_sparse_attention", "triton", _block_sparse_triton, priority=15, available=_cuda_with_triton)
