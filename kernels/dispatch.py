"""One dispatch point per compute op: the best available implementation wins.

Implementations are registered through the ``register_kernels`` hook with a
priority and an availability check; the config's ``kernels.<op>: <name>``
forces one. Loaders are called lazily, so registering a Triton kernel never
imports Triton on a machine that will not use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jevons.framework.errors import UsageError, did_you_mean, format_choices


@dataclass
class KernelImpl:
    op: str
    name: str
    loader: Callable[[], Callable[..., Any]]
    priority: int
    available: Callable[[], bool]
    plugin: str


_REGISTRY: dict[str, dict[str, KernelImpl]] = {}
_FORCED: dict[str, str] = {}
_CACHE: dict[str, Callable[..., Any]] = {}


def registrar(plugin: str) -> Callable[..., None]:
    """The ``register`` callback handed to one plugin's ``register_kernels``."""

    def register(
        op: str,
        name: str,
        loader: Callable[[], Callable[..., Any]],
        priority: int = 0,
        available: Callable[[], bool] = lambda: True,
    ) -> None:
        impls = _REGISTRY.setdefault(op, {})
        if name in impls and impls[name].plugin != plugin:
            raise UsageError(
                f"Kernel '{op}/{name}' is registered by both plugin '{impls[name].plugin}' and plugin '{plugin}'."
            )
        impls[name] = KernelImpl(op, name, loader, priority, available, plugin)
        _CACHE.pop(op, None)

    return register


def force(choices: dict[str, str]) -> None:
    """Apply the config's ``kernels`` section, checking every name."""
    for op, name in choices.items():
        if op not in _REGISTRY:
            raise UsageError(
                f"kernels.{op}: no such op.{did_you_mean(op, _REGISTRY)} Ops: {format_choices(_REGISTRY)}."
            )
        if name not in _REGISTRY[op]:
            raise UsageError(
                f"kernels.{op}={name!r}: no such implementation.{did_you_mean(name, _REGISTRY[op])} "
                f"Implementations: {format_choices(_REGISTRY[op])}."
            )
    _FORCED.clear()
    _FORCED.update(choices)
    _CACHE.clear()


def implementations(op: str) -> list[KernelImpl]:
    """Registered implementations of ``op``, best first."""
    return sorted(_REGISTRY.get(op, {}).values(), key=lambda impl: -impl.priority)


def choose(op: str) -> KernelImpl:
    """The implementation dispatch would use for ``op`` now."""
    if op in _FORCED:
        impl = _REGISTRY[op][_FORCED[op]]
        if not impl.available():
            raise UsageError(f"kernels.{op}={impl.name!r} is not available on this machine.")
        return impl
    for impl in implementations(op):
        if impl.available():
            return impl
    raise UsageError(
        f"No implementation of kernel op '{op}' is available. Registered: {format_choices(_REGISTRY.get(op, {}))}."
    )


def get(op: str) -> Callable[..., Any]:
    """The callable for ``op``, loaded once per process."""
    if op not in _CACHE:
        _CACHE[op] = choose(op).loader()
    return _CACHE[op]
