"""A per-call switch for attention that approximates: ``dense_attention()`` asks for the exact one.

An attention replacement that computes less than full attention (block-sparse
attention) serves calls inside :func:`dense_attention` with the dense attention
it replaced. BLADE's recipe needs it: with LoRA, step distillation's student,
teacher and fake score share one frozen base, so one set of attention modules
serves a sparse student and a dense teacher and fake score. Neither plugin
names the other; both name this.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


@contextmanager
def dense_attention(enabled: bool = True) -> Iterator[None]:
    """Within this, attention replacements compute the dense attention they replaced (``enabled=False``:
    their own again; a checkpointed block's rerun restores what its forward saw)."""
    outer, _state.dense = dense_attention_requested(), enabled
    try:
        yield
    finally:
        _state.dense = outer


def dense_attention_requested() -> bool:
    return getattr(_state, "dense", False)
