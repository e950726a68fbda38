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
each forward is counted once. The rerun sees the per-call switches its forward
saw (dense attention, the active adapter), set by the checkpoint's recompute
context. With ``trainer.compile`` the block's own forward is compiled and the
checkpoint stays outside the compiled region (dynamo does not trace a
checkpoint with a recompute context).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from typing import Any, ClassVar

import torch
from torch.utils.checkpoint import checkpoint

from jevons.framework import ulysses
from jevons.framework.adapters import adapter_switches, switched_as
from jevons.framework.attention import dense_attention, dense_attention_requested

_state = threading.local()


def recomputing() -> bool:
    """True while a checkpointed block reruns its forward for backward."""
    return getattr(_state, "recomputing", False)


class _Rerun:
    """The rerun sees what the forward saw: the per-call switches (dense attention, the active adapter,
    which step distillation's teacher and fake score flip around their calls and which are off again
    by the time backward runs; the Ulysses sequence length), and :func:`recomputing` is True. Entered on the thread that reruns,
    once per rerun (a class, not a generator: checkpoint may enter one context more than once)."""

    def __init__(self, dense: bool, switches: list[tuple[Any, Any, bool]], sequence: int | None) -> None:
        self.dense, self.switches, self.sequence = dense, switches, sequence
        self._entered: list[tuple[bool, ExitStack]] = []

    def __enter__(self) -> None:
        stack = ExitStack()
        stack.enter_context(dense_attention(self.dense))
        stack.enter_context(switched_as(self.switches))
        stack.enter_context(ulysses.length_as(self.sequence))
        self._entered.append((recomputing(), stack))
        _state.recomputing = True

    def __exit__(self, *exc: object) -> None:
        outer, stack = self._entered.pop()
        _state.recomputing = outer
        stack.close()


class CheckpointedBlock(torch.nn.Module):
    """Mixin placed before a block's own class: its forward runs under ``torch.utils.checkpoint``."""

    inner_forward: ClassVar[Callable[..., Any]]
    """The block class's own forward (``torch.compile``-d by ``trainer.compile``): checkpointing stays
    outside the compiled region, where its rerun context can be set."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = partial(type(self).inner_forward, self)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        dense, switches, sequence = dense_attention_requested(), adapter_switches(self), ulysses.recorded_length()

        def contexts() -> tuple[Any, Any]:
            return nullcontext(), _Rerun(dense, switches, sequence)

        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)


_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    if issubclass(cls, CheckpointedBlock):
        return cls
    if cls not in _CLASSES:
        namespace = {"__module__": cls.__module__, "inner_forward": cls.forward}
        _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (CheckpointedBlock, cls), namespace)
    return _CLASSES[cls]


def compile_checkpointed(block: torch.nn.Module) -> None:
    """``torch.compile`` a checkpointed block's own forward, once per block class (blocks of one class
    share it, as ``Module.compile`` shares one graph)."""
    cls = type(block)
    assert issubclass(cls, CheckpointedBlock)
    if not hasattr(cls.inner_forward, "_torchdynamo_orig_callable"):
        cls.inner_forward = torch.compile(cls.inner_forward)


def checkpoint_blocks(model: torch.nn.Module, blocks: Sequence[str], every: int) -> list[str]:
    """Checkpoint every ``every``-th of ``blocks`` (submodule names, in model order) in place; returns
    the names of those checkpointed."""
    chosen = list(blocks[::every])
    for name in chosen:
        block = model.get_submodule(name)
        block.__class__ = _checkpointed_class(type(block))
    return chosen
