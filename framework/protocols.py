"""The shapes of what hooks take and return, where the answer is duck-typed.

Objectives subclass :class:`jevons.framework.objective.Objective` and
optimizers come as ``torch.optim.Optimizer`` or
:class:`jevons.framework.optim.Optimization`; batch samplers and generators
are duck-typed, so they are Protocols a type checker can hold an answer to.
This module imports nothing heavy: hookspecs and plugins name these types at
config time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from jevons.kernels.dispatch import OpSpec


class KernelRegistrar(Protocol):
    """The ``register`` callback of ``register_kernels``.

    ``register(op, name, loader, priority, available, trains, dtypes, compiles)`` adds an implementation:
    ``loader()`` returns the callable; ``available()`` and ``trains()`` (has a backward here) are asked on
    this machine; ``dtypes`` are compute dtypes it offers as ``compute_dtype=``; ``compiles`` says its first
    call compiles. ``register.define(op, OpSpec(reference, bound, ...))`` makes the op measured
    (:mod:`jevons.kernels.dispatch`); an op never defined dispatches by priority.
    """

    def __call__(
        self,
        op: str,
        name: str,
        loader: Callable[[], Callable[..., Any]],
        priority: int = 0,
        available: Callable[[], bool] = ...,
        trains: Callable[[], bool] = ...,
        dtypes: Sequence[str] = (),
        compiles: bool = False,
    ) -> None: ...

    def define(self, op: str, spec: OpSpec) -> None: ...


@runtime_checkable
class MapDataset(Protocol):
    """A family's (or an objective's) map-style dataset, as batch samplers see it.

    ``lengths`` holds every readable sample's length(s), shape ``(N, D)`` with
    ``D`` 1 or 2 (e.g. audio frames and text tokens), so samplers can plan
    batches up front; ``collate`` turns a list of samples into a batch.
    """

    lengths: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def collate(self, samples: list[Any]) -> Any: ...


@runtime_checkable
class AttentionProcessor(Protocol):
    """A diffusers attention processor: ``replace_attention`` may answer one for a diffusers
    attention module, installed with ``module.set_processor`` so parameter names stay."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class BatchSampler(Protocol):
    """Yields one list of dataset indices per batch, for this data-parallel rank.

    It owns the data-parallel split (every rank steps through the same number of
    batches) and its position: the framework saves ``state_dict()`` in
    checkpoints, calls ``set_epoch`` at each epoch and ``resume(epoch, position)``
    after loading one (docs/architecture.md, "Data").
    """

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def resume(self, epoch: int, position: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Generator(Protocol):
    """The inference sampler of a run: an object holding the model it samples from.

    How it is called is its family's: a call with prompts (``llm``), with class labels and a
    shape (``diffusion``), with features (``speech``), or ``images``/``captions`` methods
    (``mixed_modal``); the family's ``evaluate`` and ``sample`` use it.
    """

    model: torch.nn.Module
