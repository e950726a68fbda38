"""What every benchmark shares: the results JSON of docs/architecture.md ("Benchmarks"), and a step timer.

A full run writes ``benchmarks/results/<name>.json`` (committed); ``--quick``
writes ``<name>.quick.json`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute); results are not committed")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def machine() -> str:
    cpus = os.cpu_count()
    try:
        import torch

        threads = torch.get_num_threads()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        versions = f"torch {torch.__version__}"
    except ImportError:
        threads, device, versions = "?", "?", ""
    return f"{platform.machine()} {platform.processor() or ''} {cpus} CPUs ({threads} torch threads), {device}, {versions}".replace(
        "  ", " "
    )


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def write_result(
    name: str, quick: bool, figures: dict[str, float], targets: dict[str, str], details: dict[str, Any] | None = None
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    result = {
        "benchmark": name,
        "quick": quick,
        "machine": machine(),
        "commit": commit(),
        "figures": {k: round(float(v), 6) for k, v in figures.items()},
        "targets": targets,
        "details": details or {},
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"figures": result["figures"], "targets": targets}, indent=2))
    print(f"wrote {path}")
    return path


class StepTimes:
    """Wall time between consecutive step ends: data wait, forward, backward, optimizer and loop overhead."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def steady(self, warmup: int) -> list[float]:
        return self.times[warmup:]


def repository_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (results name files portably), else as given."""
    root = RESULTS.parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def median(values: list[float]) -> float:
    return statistics.median(values)
