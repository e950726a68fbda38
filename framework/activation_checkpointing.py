"""``trainer.activation_checkpointing``: recompute blocks' activations in backward instead of keeping them.

Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost": a checkpointed
block keeps only its inputs for backward and reruns its forward there, trading
one more forward of the block for its activations. ``full`` checkpoints every
block; ``N`` every N-th block, starting at the first (torchtitan's per-layer
selective checkpointing). Checkpointing uses ``torch.utils.checkpoint`` without
reentrancy, which restores the RNG state for the rerun, so dropout draws the
same masks and losses and gradients are those of the plain model.

A checkpointed block keeps its parameter names: its class is swapped for a
subclass whose ``forward`` checkpoints the original's (a wrapper module would
prefix every name, which checkpoints, LoRA targets and Muon's groups read).
Modules that count or record in forward skip it while :func:`recomputing`, so
each forward is counted once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

_state = threading.local()


def recomputing() -> bool:
    """True while a checkpointed block reruns its forward for backward."""
    return getattr(_state, "recomputing", False)


class CheckpointedBlock(torch.nn.Module):
    """Mixin placed before a block's own class: its forward runs under ``torch.utils.checkpoint``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = super().forward
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        calls = 0

        def run(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            outer, _state.recomputing = recomputing(), calls > 1
            try:
                return forward(*args, **kwargs)
            finally:
                _state.recomputing = outer

        return checkpoint(run, *args, use_reentrant=False, **kwargs)


_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    if issubclass(cls, CheckpointedBlock):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (CheckpointedBlock, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


def checkpoint_blocks(model: torch.nn.Module, blocks: Sequence[str], every: int) -> list[str]:
    """Checkpoint every ``every``-th of ``blocks`` (submodule names, in model order) in place; returns
    the names of those checkpointed."""
    chosen = list(blocks[::every])
    for name in chosen:
        block = model.get_submodule(name)
        block.__class__ = _checkpointed_class(type(block))
    return chosen
