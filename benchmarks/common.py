"""What every benchmark shares: the results JSON of docs/architecture.md ("Benchmarks"), and a step timer;
and what several do: a plain training step, the diffusion benchmarks' real reference, interleaved sampling
timings and their quality table.

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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """What a results JSON records about where it ran: CPU model, cores, torch threads, GPU, torch version."""
    cpus = os.cpu_count()
    try:
        import torch

        threads = torch.get_num_threads()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        versions = f"torch {torch.__version__}"
    except ImportError:
        threads, device, versions = "?", "?", ""
    return f"{platform.machine()} {cpu_model()}, {cpus} CPUs ({threads} torch threads), {device}, {versions}"


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
    name: str,
    quick: bool,
    figures: dict[str, float],
    targets: dict[str, str],
    details: dict[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write ``results/<name>.json``; ``command`` is how to rerun it when that is not
    ``python benchmarks/<name>.py`` (a script measuring on one of several testbeds)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    result = {
        "benchmark": name,
        **({"command": command} if command else {}),
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


def train_step(model: Any, objective: Any, optimization: Any, batch: Any, clip: float) -> Any:
    """One training step as the framework takes it: forward, zero_grad, backward, gradient clipping to
    ``clip`` (``trainer.gradient_clip_val``), optimizer and scheduler steps. Returns the objective's output."""
    import torch

    out = objective(model, batch)
    optimization.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimization.optimizer.step()
    optimization.scheduler.step()
    return out


def diffusion_reference(overrides: list[str], reals: int) -> tuple[Any, Any, Any, Path]:
    """What the diffusion benchmarks score against: the plugin manager, the config composed from
    ``overrides``, ``reals`` real reference samples and the family's images folder."""
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, overrides)
    family = manager.family("diffusion")
    return manager, config, family.real_reference(config, reals), family.images_dir(config)


def interleaved_seconds(arms: dict[Any, Any], labels: Any, shape: Any, rounds: int) -> dict[Any, float]:
    """Median seconds of each arm's ``sampler(labels, shape, seed=round)`` (an arm is a sampler, or a
    ``(sampler, kwargs)`` pair whose kwargs go to every call), over ``rounds`` rounds of every arm in turn,
    so a slow spell on a shared machine falls on all arms alike."""
    seconds: dict[Any, list[float]] = {name: [] for name in arms}
    for number in range(rounds):
        for name, arm in arms.items():
            sampler, kwargs = arm if isinstance(arm, tuple) else (arm, {})
            started = time.perf_counter()
            sampler(labels, shape, seed=number, **kwargs)
            seconds[name].append(time.perf_counter() - started)
    return {name: median(values) for name, values in seconds.items()}


def interleaved_rates(arms: dict[Any, Any], labels: Any, shape: Any, rounds: int) -> dict[Any, float]:
    """Images per second of each arm, timed as :func:`interleaved_seconds` does."""
    return {name: len(labels) / value for name, value in interleaved_seconds(arms, labels, shape, rounds).items()}


def quality_table(
    title: str,
    scores: dict[str, dict[str, Any]],
    reference: tuple[str, float],
    columns: list[str],
    cells: dict[str, list[str]],
) -> dict[str, Any]:
    """A result's ``details["tables"]`` of one table of the arms' quality, as benchmarks/report.py renders it:
    per arm of ``scores``, its Fréchet distance, that over the reference's (``reference``: the reference's
    label and distance) and its accuracy, then the arm's ``cells`` under ``columns``."""
    label, reference_fd = reference
    rows = [
        [arm, f"{s['fd']:.2f}", f"{s['fd'] / reference_fd:.3f}", f"{s['accuracy']:.3f}", *cells[arm]]
        for arm, s in scores.items()
    ]
    return {title: {"columns": ["arm", "Fréchet distance", f"FD / {label}", "accuracy", *columns], "rows": rows}}
