"""Compute kernels: a plain-PyTorch reference per op, faster paths, one dispatch point.

This package is itself a built-in plugin: it registers its implementations
through ``register_kernels`` like any third-party kernel package would. Each
loader imports its implementation only when dispatch picks it, so Triton is
never imported on a machine that does not use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jevons.framework.plugin import hookimpl

if TYPE_CHECKING:
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


@hookimpl
def register_kernels(register: KernelRegistrar) -> None:
    register("newton_schulz", "reference", _newton_schulz_reference, priority=0)
    # Below the reference until benchmarks/gpu_check.py shows it faster on a GPU;
    # `kernels.newton_schulz=triton` selects it explicitly.
    register("newton_schulz", "triton", _newton_schulz_triton, priority=-10, available=_cuda_with_triton)
    # Training needs a backward: FlexAttention has one on CUDA only; the gather path runs everywhere.
    register("block_sparse_attention", "reference", _block_sparse("reference"), priority=0)
    register("block_sparse_attention", "gather", _block_sparse("gather"), priority=10)
    register("block_sparse_attention", "flex", _block_sparse("flex"), priority=20, available=_cuda)
    # Below FlexAttention until benchmarks/gpu_check.py shows its forward faster on a GPU.
    register("block_sparse_attention", "triton", _block_sparse_triton, priority=15, available=_cuda_with_triton)
