"""Timing candidate implementations of one op on the inputs at hand, and checking them against the reference.

Every candidate runs once untimed (first-call work: compilation, allocation,
lazy imports); then the candidates are timed in interleaved rounds, one call
each per round, so a load change on the machine falls on all of them. After
the first round a candidate more than ``PRUNE_FACTOR`` times slower than the
fastest stops being timed (the dense reference at 8k tokens costs seconds a
call and cannot win). The others go on until there are ``MIN_ROUNDS`` rounds
and each has used ``budget_s``, or ``MAX_ROUNDS``; a candidate's time is its
median. Three rounds of 15 ms calls were measured to misrank two paths 7%
apart by 10% here; ``budget_s`` of 0.1 s gives such calls seven. In
training mode a call is the forward and the backward (a gradient of ones
flows back), so paths are ranked by what training pays.

A candidate's error is the largest relative Frobenius distance of its output
(and, in training mode, of each input gradient) to the reference's, which is
computed once in float32 with autocast off. A candidate above the op's bound,
or one that raises, is never picked.

The clock is injectable so tests can give fake implementations known speeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_ROUNDS = 3
MAX_ROUNDS = 20
BUDGET_S = 0.1  # timed time of each candidate still in the running
PRUNE_FACTOR = 2.0


@dataclass
class CandidateResult:
    name: str
    ms: float | None = None
    error: float | None = None
    failed: str | None = None
    times: list[float] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        if self.failed is not None:
            return {"failed": self.failed}
        return {"ms": round(self.ms or 0.0, 6), "error": self.error}


@dataclass
class Measurement:
    choice: str
    results: list[CandidateResult] = field(default_factory=list)

    def as_entry(self) -> dict[str, Any]:
        return {"choice": self.choice, "candidates": {r.name: r.as_json() for r in self.results}}


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """``||out - reference||_F / ||reference||_F`` in float64 (0 when both are zero)."""
    diff = (out.detach().double() - reference.double()).norm()
    scale = reference.double().norm()
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / scale)


def _leaves(inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def _device_type(inputs: tuple[Any, ...]) -> str:
    return next((t.device.type for t in inputs if isinstance(t, torch.Tensor)), "cpu")


def reference_outputs(
    reference: Callable[..., torch.Tensor], inputs: tuple[Any, ...], training: bool
) -> list[torch.Tensor]:
    """The reference's output and, when training, the gradients of its inputs: float32, autocast off."""
    as_float = tuple(
        t.detach().float().requires_grad_(t.requires_grad)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
        else t
        for t in inputs
    )
    with torch.autocast(_device_type(inputs), enabled=False), torch.set_grad_enabled(training):
        out = reference(*as_float)
        if not training:
            return [out.detach()]
        leaves = _leaves(as_float)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out)) if leaves else ()
    return [out.detach(), *grads]


def rng_untouched(tensors: Any) -> AbstractContextManager[Any]:
    """Measure without moving the global random streams (CPU, and the CUDA devices ``tensors`` are on):
    a run that measured must draw the same noise as one that found the choice cached."""
    devices = sorted({t.device.index or 0 for t in _flat(tensors) if isinstance(t, torch.Tensor) and t.is_cuda})
    return torch.random.fork_rng(devices=devices)


def _flat(values: Any) -> list[Any]:
    return [v for value in values for v in (_flat(value) if isinstance(value, (tuple, list)) else [value])]


def measure(
    candidates: dict[str, Callable[..., torch.Tensor]],
    inputs: tuple[Any, ...],
    reference: list[torch.Tensor],
    bound: float,
    training: bool,
    clock: Callable[[], float],
    budget_s: float = BUDGET_S,
) -> Measurement:
    """Time every candidate on ``inputs`` and pick the fastest whose error is within ``bound``;
    ``reference`` is :func:`reference_outputs` of the same inputs."""
    leaves = _leaves(inputs) if training else []
    cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)

    def call(fn: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
        if not training:
            with torch.no_grad():
                return [fn(*inputs)]
        for leaf in leaves:
            leaf.grad = None
        with torch.enable_grad():
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
        return [out, *(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves)]

    results = {name: CandidateResult(name) for name in candidates}
    for name, fn in candidates.items():
        result = results[name]
        try:
            outputs = call(fn)
            result.error = max(relative_error(o, r) for o, r in zip(outputs, reference, strict=True))
        except Exception as error:  # a candidate that cannot run here is reported, never picked
            result.failed = f"{type(error).__name__}: {error}"[:300]
    running = [r for r in results.values() if r.failed is None]
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and all(sum(r.times) >= budget_s for r in running):
            break
        for result in running if round_index % 2 == 0 else running[::-1]:
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            call(candidates[result.name])
            if cuda:
                torch.cuda.synchronize()
            result.times.append(clock() - start)
        accurate = [r.times[0] for r in running if r.error is not None and r.error <= bound]
        if round_index == 0 and accurate:
            fastest = min(accurate)  # of those that may win: a path too wrong to pick prunes nothing
            timed = [r for r in running if r.times[0] <= PRUNE_FACTOR * fastest]
            dropped, running = [r for r in running if r not in timed], timed
            for result in dropped:
                result.ms = result.times[0] * 1e3
    for result in running:
        result.ms = statistics.median(result.times) * 1e3
    measured = [r for r in results.values() if r.failed is None]
    fit = [r for r in measured if r.error is not None and r.error <= bound]
    if not fit:
        summary = "; ".join(f"{r.name}: {r.failed or f'error {r.error:.3g}'}" for r in results.values())
        raise RuntimeError(f"no candidate met the accuracy bound {bound:g}: {summary}")
    best = min(fit, key=lambda r: r.ms or 0.0)
    return Measurement(best.name, list(results.values()))
