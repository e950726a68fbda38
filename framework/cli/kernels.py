"""``jevons kernels``: every kernel op, its implementations and whether they run here, and what dispatch
picked on this machine with the times and errors that decided it (``--measure`` measures the ops'
example shapes first)."""

from __future__ import annotations

import argparse
from typing import Any

from jevons.framework.text_table import format_table


def add_parser(commands: Any) -> None:
    kernels = commands.add_parser(
        "kernels", help="kernel ops, their implementations, and what dispatch measured and picked on this machine"
    )
    kernels.add_argument("--measure", action="store_true", help="measure each op's example shapes now (seconds)")
    kernels.add_argument(
        "--compiled", action="store_true", help="with --measure: also paths that compile first (FlexAttention on CPU)"
    )
    kernels.add_argument("--root", help="cache folder (default $JEVONS_DATA or ~/.cache/jevons)")


def run(args: argparse.Namespace) -> int:
    import torch

    from jevons.framework.data.cache import data_root
    from jevons.framework.plugin_manager import PluginManager
    from jevons.kernels import dispatch
    from jevons.kernels.choices import device_key

    PluginManager.load()
    dispatch.force({})
    cache_path = data_root(args.root) / "kernels.json"
    dispatch.use_files(cache_path, None, resume=False, refresh=args.measure)
    if args.measure:
        dispatch.configure(measure_compiled=args.compiled)
        for op in dispatch.ops():
            spec = dispatch.spec(op)
            for example_args, training in spec.examples() if spec is not None and spec.examples else ():
                with torch.set_grad_enabled(training):
                    dispatch.call(op, *example_args)
    rows = []
    for op in dispatch.ops():
        for impl in dispatch.implementations(op):
            available = impl.available()
            rows.append(
                (
                    op,
                    impl.name,
                    impl.plugin,
                    "yes" if available else "no",
                    ("yes" if impl.trains() else "inference only") if available else "-",
                    ", ".join(impl.dtypes) or "-",
                    "measured" if dispatch.spec(op) else f"priority {impl.priority}",
                )
            )
    print(format_table(("op", "implementation", "plugin", "available", "trains", "dtypes", "dispatch"), rows))
    machine = device_key(torch.device("cpu"))
    devices = [machine] + ([device_key(torch.device("cuda"))] if torch.cuda.is_available() else [])
    cache = dispatch.machine_cache()
    print(f"\nPicked on this machine ({cache_path}):")
    picked = []
    for device in devices:
        for key, entry in sorted((cache.devices.get(device, {}) if cache else {}).items()):
            if "|" not in key or "choice" not in entry:
                continue
            op, mode, _, shape = key.split("|", 3) if key.count("|") >= 3 else (*key.split("|"), "")
            times = "; ".join(_describe(name, result) for name, result in sorted(entry["candidates"].items()))
            picked.append((op, mode, shape, entry["choice"], times))
    if picked:
        print(format_table(("op", "mode", "shape class", "picked", "candidates: median ms (error)"), picked))
    else:
        print("  nothing measured yet: a run measures the shapes it meets, or run `jevons kernels --measure`")
    peaks = [
        (key.split("|")[1], f"{value['flops_per_s'] / 1e12:.3f}")
        for device in devices
        for key, value in sorted((cache.devices.get(device, {}) if cache else {}).items())
        if key.startswith("peak_matmul|") and isinstance(value, dict)
    ]
    if peaks:
        print(f"\nPeak matmul rate measured on {machine} (the MFU denominator):")
        print(format_table(("dtype", "TFLOP/s"), peaks))
    return 0


def _describe(name: str, result: dict[str, Any]) -> str:
    if "failed" in result:
        return f"{name}: {result['failed']}"
    return f"{name}: {result['ms']:.3g} ({result['error']:.1e})"
