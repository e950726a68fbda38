"""The device's peak matmul rate, measured: the denominator of model FLOPs utilisation.

Spec sheets give the rate of a chip at its boost clock with every unit busy;
what a run can reach here depends on the CPU's vector units, the threads
torch uses, the GPU's clocks and the library build. So the rate is measured:
square matrices in the run's dtype, doubled in size until a timed call takes
at least 20 ms (or 4096 on a side on a CPU, 8192 on a GPU, where a call is 10
back-to-back products between synchronisations so launch gaps do not count),
then timed for about 0.3 s; the best rate of those calls counts. Measured
once per device, dtype, thread count and float32 matmul precision (TF32 or
not), by rank 0 alone, and cached with the kernel choices
(:mod:`jevons.kernels.choices`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from jevons.kernels.choices import MachineCache, device_key
from jevons.kernels.measure import rng_untouched

PRECISION_DTYPES = {
    "32-true": torch.float32,
    "32": torch.float32,
    "64-true": torch.float64,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
}
"""The dtype a Lightning precision setting multiplies in."""

MAX_SIDE = {"cpu": 4096, "cuda": 8192}
MIN_CALL_S = 0.02
BUDGET_S = 0.3


def measure_peak_matmul(
    device: torch.device, dtype: torch.dtype, clock: Callable[[], float] = time.perf_counter
) -> float:
    """FLOP/s of the fastest square matmul call on ``device`` in ``dtype``."""

    cuda = device.type == "cuda"
    products = 10 if cuda else 1

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = clock()
        for _ in range(products):
            torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize(device)
        return clock() - start

    side = 256
    while True:
        a = torch.randn(side, side, device=device).to(dtype)
        b = torch.randn(side, side, device=device).to(dtype)
        timed(a, b)  # first call: allocation, library warm-up
        seconds = timed(a, b)
        if seconds >= MIN_CALL_S or side >= MAX_SIDE.get(device.type, 4096):
            break
        side *= 2
    best, spent = seconds, 0.0
    while spent < BUDGET_S:
        seconds = timed(a, b)
        best, spent = min(best, seconds), spent + seconds
    return 2.0 * side**3 * products / best


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, cache: MachineCache | None) -> float:
    """The measured peak, from the machine cache when it holds one for this device, dtype and threads."""
    key = f"peak_matmul|{str(dtype).removeprefix('torch.')}"
    if dtype == torch.float32:
        key += f" precision={torch.get_float32_matmul_precision()}"  # "high" lets float32 products use TF32
    machine = device_key(device)
    cached = cache.value(machine, key) if cache is not None else None
    if isinstance(cached, dict) and isinstance(cached.get("flops_per_s"), (int, float)):
        return float(cached["flops_per_s"])
    with rng_untouched([torch.empty(0, device=device)]):  # the run's noise must not depend on a cold cache
        flops = measure_peak_matmul(device, dtype)
    if cache is not None:
        cache.put(machine, key, {"flops_per_s": flops})
    return flops
