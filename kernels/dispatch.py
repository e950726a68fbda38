"""One dispatch point per compute op: the fastest implementation that is accurate enough, measured here.

Implementations are registered through the ``register_kernels`` hook, each
with an availability check, whether it can train here (has a backward), and
for some ops the compute dtypes it offers. An op *defined* with
``register.define(op, reference=..., bound=...)`` is dispatched by
measurement: the first call with a new shape class (each dimension rounded up
to a power of two, the dtypes, training or inference) times every candidate
(implementation x compute dtype) on the inputs at hand and picks the fastest
whose relative error against the float32 reference is within the op's bound
(:mod:`jevons.kernels.measure`). The choice is cached per device in the data
cache and recorded in the run directory, which a resume reuses
(:mod:`jevons.kernels.choices`). In a multi-process run rank 0 decides and
broadcasts, so every rank computes the same thing. Ops that are not defined
fall back to the highest-priority available implementation.

``kernels.<op>: NAME`` (or ``NAME:DTYPE``) forces a choice; a forced
implementation that cannot train here (FlexAttention on the CPU) is used for
inference and dispatch measures the others for training. Time spent measuring
is excluded from throughput (:func:`measuring_seconds`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jevons.framework.errors import UsageError, did_you_mean, format_choices
from jevons.kernels.choices import MachineCache, RunFile

if TYPE_CHECKING:
    import torch

# torch is imported where a call needs it: plugins register kernels while the config is checked,
# before torch is imported (a config mistake is refused in a fraction of a second).


def _always() -> bool:
    return True


@dataclass
class KernelImpl:
    op: str
    name: str
    loader: Callable[[], Callable[..., Any]]
    priority: int
    available: Callable[[], bool]
    plugin: str
    trains: Callable[[], bool] = _always
    """Whether it has a backward on this machine; one that has none is a candidate for inference only."""
    dtypes: tuple[str, ...] = ()
    """Compute dtypes it offers (passed as ``compute_dtype=``); each is a separate candidate."""
    compiles: bool = False
    """Its first call compiles (tens of seconds): measured for training, which repays that, and for
    inference only when asked (:func:`configure`)."""


@dataclass(frozen=True)
class OpSpec:
    """How dispatch measures an op.

    :param reference: the ground truth on the call's positional arguments, computed in float32.
    :param bound: the largest relative Frobenius error to the reference a candidate may have. Fixed
        per op from what the op needs, not tuned to the candidates.
    :param inputs: the measurement's inputs from the call's positional arguments (default: the
        arguments themselves, tensors detached). The measurement calls the op with positional
        arguments only, so the bound is judged at the op's standard settings (Newton-Schulz: 5 steps).
    :param examples: representative calls, measured by ``jevons kernels --measure``.

    The shape class is built from shapes, dtypes and non-tensor arguments alone, never from values
    (a mask's density, say): every rank of a data-parallel run then meets the same classes in the same
    order, which the broadcast of rank 0's decision needs, and a lookup costs no device sync.
    """

    reference: Callable[..., torch.Tensor]
    bound: float
    inputs: Callable[..., tuple[Any, ...]] | None = None
    examples: Callable[[], list[tuple[tuple[Any, ...], bool]]] | None = None
    """Representative ``(arguments, training)`` calls for ``jevons kernels --measure``."""


@dataclass
class Decision:
    op: str
    key: str
    choice: str
    reason: str
    """``measured``, ``cached``, ``resumed``, ``forced`` or ``only candidate``."""
    fn: Callable[..., Any] = field(repr=False)
    entry: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def implementation(self) -> str:
        return self.choice.split(":")[0]

    @property
    def dtype(self) -> str | None:
        return self.choice.split(":")[1] if ":" in self.choice else None


_REGISTRY: dict[str, dict[str, KernelImpl]] = {}
_SPECS: dict[str, OpSpec] = {}
_FORCED: dict[str, str] = {}
_LOADED: dict[tuple[str, str], Callable[..., Any]] = {}
_DECISIONS: dict[str, Decision] = {}
SKIPPED = "not measured: compiles on first call"
"""What the cache records for a candidate left out of an inference measurement because it compiles."""


@dataclass
class _Settings:
    clock: Callable[[], float] = time.perf_counter
    cache: MachineCache | None = None
    run_file: RunFile | None = None
    measure_compiled: bool = False
    refresh: bool = False
    measuring_seconds: float = 0.0


_SETTINGS = _Settings()


class Registrar:
    """The ``register`` callback handed to one plugin's ``register_kernels``; ``register.define`` defines an op."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin

    def __call__(
        self,
        op: str,
        name: str,
        loader: Callable[[], Callable[..., Any]],
        priority: int = 0,
        available: Callable[[], bool] = _always,
        trains: Callable[[], bool] = _always,
        dtypes: Sequence[str] = (),
        compiles: bool = False,
    ) -> None:
        impls = _REGISTRY.setdefault(op, {})
        if name in impls and impls[name].plugin != self.plugin:
            raise UsageError(
                f"Kernel '{op}/{name}' is registered by both plugin '{impls[name].plugin}' and plugin '{self.plugin}'."
            )
        if ":" in name:
            raise UsageError(f"Kernel name {name!r} of op '{op}' may not contain ':' (it separates the dtype).")
        impls[name] = KernelImpl(op, name, loader, priority, available, self.plugin, trains, tuple(dtypes), compiles)
        _LOADED.pop((op, name), None)
        _DECISIONS.clear()

    def define(self, op: str, spec: OpSpec) -> None:
        _SPECS[op] = spec
        _DECISIONS.clear()


def registrar(plugin: str) -> Registrar:
    return Registrar(plugin)


def force(choices: dict[str, str]) -> None:
    """Apply the config's ``kernels`` section, checking every name; start the run's choices afresh."""
    for op, choice in choices.items():
        if op not in _REGISTRY:
            raise UsageError(
                f"kernels.{op}: no such op.{did_you_mean(op, _REGISTRY)} Ops: {format_choices(_REGISTRY)}."
            )
        name, _, dtype = str(choice).partition(":")
        if name not in _REGISTRY[op]:
            raise UsageError(
                f"kernels.{op}={choice!r}: no such implementation.{did_you_mean(name, _REGISTRY[op])} "
                f"Implementations: {format_choices(_REGISTRY[op])}."
            )
        impl = _REGISTRY[op][name]
        if dtype and dtype not in impl.dtypes:
            offered = ", ".join(impl.dtypes) or "none (it takes no compute dtype)"
            raise UsageError(f"kernels.{op}={choice!r}: '{name}' offers compute dtypes {offered}.")
    _FORCED.clear()
    _FORCED.update({op: str(choice) for op, choice in choices.items()})
    _DECISIONS.clear()


def use_files(cache_path: Path | None, run_file: Path | None, resume: bool, refresh: bool = False) -> None:
    """Where measured choices are cached for this machine, and this run's record of its choices;
    ``refresh`` measures again instead of reading cached choices (``jevons kernels --measure``)."""
    _SETTINGS.cache = MachineCache(cache_path) if cache_path is not None else None
    _SETTINGS.run_file = RunFile(run_file, resume) if run_file is not None else None
    _SETTINGS.refresh = refresh


def configure(clock: Callable[[], float] | None = None, measure_compiled: bool | None = None) -> None:
    """Test and benchmark settings: the clock measurements read; whether candidates that compile on
    their first call (compiled FlexAttention, 22 s on a 2-core CPU) are measured for inference."""
    if clock is not None:
        _SETTINGS.clock = clock
    if measure_compiled is not None:
        _SETTINGS.measure_compiled = measure_compiled
    _DECISIONS.clear()


def machine_cache() -> MachineCache | None:
    """This run's machine cache (None outside a run)."""
    return _SETTINGS.cache


def measuring_seconds() -> float:
    """Seconds this process has spent measuring candidates (excluded from throughput)."""
    return _SETTINGS.measuring_seconds


def implementations(op: str) -> list[KernelImpl]:
    """Registered implementations of ``op``, best priority first."""
    return sorted(_REGISTRY.get(op, {}).values(), key=lambda impl: -impl.priority)


def ops() -> list[str]:
    return sorted(_REGISTRY)


def spec(op: str) -> OpSpec | None:
    return _SPECS.get(op)


def choose(op: str) -> KernelImpl:
    """The implementation priority dispatch would use for ``op`` (ops that are not measured)."""
    if op in _FORCED:
        impl = _REGISTRY[op][_FORCED[op].partition(":")[0]]
        if not impl.available():
            raise UsageError(f"kernels.{op}={impl.name!r} is not available on this machine.")
        return impl
    for impl in implementations(op):
        if impl.available():
            return impl
    raise UsageError(
        f"No implementation of kernel op '{op}' is available. Registered: {format_choices(_REGISTRY.get(op, {}))}."
    )


def decisions(op: str | None = None) -> list[Decision]:
    """This run's decisions so far (for one op or all), in the order they were made."""
    return [d for d in _DECISIONS.values() if op is None or d.op == op]


def get(op: str) -> Callable[..., Any]:
    """A callable for ``op`` that dispatches each call by its shape class: once decided, a key built
    from the arguments' shapes and a dict lookup."""
    return functools.partial(call, op)


def call(op: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` with the implementation chosen for these arguments. A ``compute_dtype=`` keyword
    restricts the candidates to that dtype instead of being measured."""
    return select(op, args, kwargs.pop("compute_dtype", None))(*args, **kwargs)


def select(op: str, args: tuple[Any, ...], compute_dtype: torch.dtype | None = None) -> Callable[..., Any]:
    """The implementation (with its compute dtype bound) for a call of ``op`` with ``args``."""
    import torch

    if op not in _SPECS:
        fn = _load(choose(op))
        return functools.partial(fn, compute_dtype=compute_dtype) if compute_dtype is not None else fn
    training = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    dtype = str(compute_dtype).removeprefix("torch.") if compute_dtype is not None else None
    key = shape_class_key(op, args, training, dtype)
    decision = _DECISIONS.get(key)
    if decision is None:
        decision = _DECISIONS[key] = _decide(op, key, args, training, dtype)
    return decision.fn


def shape_class_key(op: str, args: tuple[Any, ...], training: bool, dtype: str | None = None) -> str:
    """``op|train|device|class``: each tensor argument's dtype and shape rounded up to powers of two,
    other arguments as written."""
    import torch

    parts = []
    device = "cpu"
    for arg in args:
        if isinstance(arg, torch.Tensor):
            device = arg.device.type
            dims = ",".join(str(_next_power_of_two(d)) for d in arg.shape)
            parts.append(f"{str(arg.dtype).removeprefix('torch.')}[{dims}]")
        else:
            parts.append(repr(arg))
    if dtype is not None:
        parts.append(f"compute {dtype}")
    return f"{op}|{'train' if training else 'infer'}|{device}|{' '.join(parts)}"


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class _Candidate:
    name: str
    impl: KernelImpl
    dtype: str | None


def candidates(op: str, training: bool, dtype: str | None = None) -> list[_Candidate]:
    """What may run a call of ``op`` here: available implementations (with a backward when training)
    x their compute dtypes, narrowed by a forced choice where it can run, and by ``dtype``."""
    pool = []
    for impl in implementations(op):
        if not impl.available() or (training and not impl.trains()):
            continue
        for option in impl.dtypes or (None,):
            if dtype is not None and impl.dtypes and option != dtype:
                continue
            pool.append(_Candidate(f"{impl.name}:{option}" if option else impl.name, impl, option))
    forced = _FORCED.get(op)
    if forced is not None:
        name, _, forced_dtype = forced.partition(":")
        impl = _REGISTRY[op][name]
        if not impl.available():
            raise UsageError(f"kernels.{op}={forced!r}: '{name}' is not available on this machine.")
        narrowed = [c for c in pool if c.impl.name == name and (not forced_dtype or c.dtype == forced_dtype)]
        if narrowed or not (training and not impl.trains()):
            pool = narrowed
    if not pool:
        raise UsageError(
            f"No implementation of kernel op '{op}' can {'train' if training else 'run'} here"
            f"{f' in {dtype}' if dtype else ''}. Registered: {format_choices(_REGISTRY.get(op, {}))}."
        )
    return pool


def _load(impl: KernelImpl) -> Callable[..., Any]:
    if (impl.op, impl.name) not in _LOADED:
        _LOADED[(impl.op, impl.name)] = impl.loader()
    return _LOADED[(impl.op, impl.name)]


def _bound(candidate: _Candidate) -> Callable[..., Any]:
    import torch

    fn = _load(candidate.impl)
    if candidate.dtype is None:
        return fn
    return functools.partial(fn, compute_dtype=getattr(torch, candidate.dtype))


def _decide(op: str, key: str, args: tuple[Any, ...], training: bool, dtype: str | None) -> Decision:
    from jevons.framework import distributed
    from jevons.kernels.choices import device_key

    started = time.perf_counter()
    pool = candidates(op, training, dtype)
    names = [c.name for c in pool]
    device = device_key(_device_of(args))
    entry: dict[str, Any] = {}
    if len(pool) == 1:
        forced = _FORCED.get(op, "").partition(":")[0] == pool[0].impl.name
        choice, reason = names[0], ("forced" if forced else "only candidate")
    else:
        choice, reason = "", ""
        if distributed.is_rank_zero():
            try:
                choice, reason, entry = _measured_choice(op, key, args, training, pool, device)
            except RuntimeError as error:  # told to every rank, not left waiting in the broadcast
                choice, reason = "", str(error)
        choice, reason = distributed.broadcast_from_rank_zero((key, choice, reason), key)[1:]
        if not choice:
            raise RuntimeError(f"kernel dispatch for {key}: {reason}")
    decision = Decision(op, key, choice, reason, _bound(next(c for c in pool if c.name == choice)), entry)
    _SETTINGS.measuring_seconds += time.perf_counter() - started
    run_file = _SETTINGS.run_file
    if run_file is not None and distributed.is_rank_zero():
        chosen = {k: {"choice": v} for k, v in run_file.pinned.items()}  # a resume keeps what it has not met yet
        chosen.update(
            {d.key: {"choice": d.choice, "reason": d.reason, **d.entry} for d in [*_DECISIONS.values(), decision]}
        )
        run_file.write(chosen, device)
    return decision


def _measured_choice(
    op: str, key: str, args: tuple[Any, ...], training: bool, pool: list[_Candidate], device: str
) -> tuple[str, str, dict[str, Any]]:
    from torch.autograd.graph import saved_tensors_hooks

    from jevons.kernels.measure import measure, reference_outputs, rng_untouched

    names = [c.name for c in pool]
    run_file, cache, spec = _SETTINGS.run_file, _SETTINGS.cache, _SPECS[op]
    if run_file is not None and key in run_file.pinned:
        pinned = run_file.pinned[key]
        if pinned in names:
            return pinned, "resumed", {}
        print(f"jevons: kernels: the resumed run chose {pinned!r} for {key}, which cannot run here; measuring again")
    measurable = [c for c in pool if training or _SETTINGS.measure_compiled or not c.impl.compiles] or pool
    cached = cache.get(device, key, names, spec.bound) if cache is not None and not _SETTINGS.refresh else None
    if cached is not None and not any(_was_skipped(cached, c.name) for c in measurable):
        return str(cached["choice"]), "cached", cached
    # The run's random stream must not depend on whether this machine measured before; and the
    # measurement's own backward is its own graph: identity saved-tensor hooks keep a checkpointed
    # block's hooks (trainer.activation_checkpointing) from claiming its tensors.
    with rng_untouched(args), saved_tensors_hooks(_kept, _kept):
        inputs = spec.inputs(*args) if spec.inputs is not None else _detached(args, training)
        reference = reference_outputs(spec.reference, inputs, training)
        result = measure(
            {c.name: _bound(c) for c in measurable}, inputs, reference, spec.bound, training, _SETTINGS.clock
        )
    entry = {**result.as_entry(), "bound": spec.bound}
    entry["candidates"].update(_skipped(pool, measurable))
    if cache is not None:
        cache.put(device, key, entry)
    return result.choice, "measured", entry


def _kept(tensor: Any) -> Any:
    return tensor


def _was_skipped(entry: dict[str, Any], name: str) -> bool:
    return str(entry["candidates"].get(name, {}).get("failed", "")).startswith(SKIPPED)


def _skipped(pool: list[_Candidate], measured: list[_Candidate]) -> dict[str, Any]:
    return {c.name: {"failed": SKIPPED} for c in pool if c not in measured}


def _detached(args: tuple[Any, ...], training: bool) -> tuple[Any, ...]:
    import torch

    return tuple(
        a.detach().clone().requires_grad_(training and a.requires_grad) if isinstance(a, torch.Tensor) else a
        for a in args
    )


def _device_of(args: tuple[Any, ...]) -> torch.device:
    import torch

    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
