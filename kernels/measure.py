"""Timing candidate implementations of one op on the inputs at hand, and checking them against the reference.

Each candidate runs once untimed (first-call work: compilation, allocation,
lazy imports), then is timed until it has at least ``MIN_REPEATS`` calls and
has used ``budget_s``, or has ``MAX_REPEATS`` calls; its time is the median.
In training mode a call is the forward and the backward (a gradient of ones
flows back), so paths are ranked by what training pays. Its error is the
relative Frobenius distance of its forward output to the op's reference,
computed once in float32; a candidate above the op's bound, or one that
raises, is never picked.

The clock is injectable so tests can give fake implementations known speeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_REPEATS = 3
MAX_REPEATS = 20
BUDGET_S = 0.03  # timed time per candidate after its first call


@dataclass
class CandidateResult:
    name: str
    ms: float | None = None
    error: float | None = None
    failed: str | None = None

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


def _synchronize(tensors: Sequence[Any]) -> None:
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors):
        torch.cuda.synchronize()


def measure(
    candidates: dict[str, Callable[..., torch.Tensor]],
    inputs: tuple[Any, ...],
    reference: torch.Tensor,
    bound: float,
    training: bool,
    clock: Callable[[], float],
    budget_s: float = BUDGET_S,
) -> Measurement:
    """Time every candidate on ``inputs`` and pick the fastest whose error is within ``bound``."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]

    def call(fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        if not training:
            with torch.no_grad():
                return fn(*inputs)
        for leaf in leaves:
            leaf.grad = None
        with torch.enable_grad():
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
        return out

    results = []
    for name, fn in candidates.items():
        result = CandidateResult(name)
        try:
            out = call(fn)
            result.error = relative_error(out, reference)
            _synchronize(inputs)
            times: list[float] = []
            spent = 0.0
            while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or spent < budget_s):
                start = clock()
                call(fn)
                _synchronize(inputs)
                times.append(clock() - start)
                spent += times[-1]
            result.ms = statistics.median(times) * 1e3
        except Exception as error:  # a candidate that cannot run here is reported, never picked
            result.failed = f"{type(error).__name__}: {error}"[:300]
        results.append(result)
    fit = [r for r in results if r.failed is None and r.error is not None and r.error <= bound]
    if not fit:
        summary = "; ".join(f"{r.name}: {r.failed or f'error {r.error:.3g}'}" for r in results)
        raise RuntimeError(f"no candidate met the accuracy bound {bound:g}: {summary}")
    best = min(fit, key=lambda r: r.ms or 0.0)
    return Measurement(best.name, results)
