"""Reading finished runs back: ``jevons compare`` (a table and loss curves side by side) and ``jevons plot``.

A run directory holds ``summary.json`` (written at the end) and ``metrics.csv``
(one row per logged step; ``time/train_s`` is cumulative training time,
validation excluded). Everything here reads those two files only, so runs
from different machines, versions or plugin sets compare alike.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jevons.framework.errors import UsageError
from jevons.framework.text_table import format_value


@dataclass
class RunRecord:
    """One finished run: its summary and its logged curves."""

    path: Path
    summary: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]

    @property
    def label(self) -> str:
        plugins = self.summary.get("plugins", "none")
        return f"{self.summary.get('recipe', '?')} [{plugins}] ({self.path.name})"

    def seconds_at(self, step: float) -> float | None:
        """Training seconds at ``step``, interpolated from the logged ``time/train_s``."""
        return _interpolate(self.curves.get("time/train_s", []), step)


def load_run(path: Path) -> RunRecord:
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        hint = (
            " (it has checkpoints: the run did not finish; resume it to get a summary)"
            if (path / "checkpoints").is_dir()
            else ""
        )
        raise UsageError(f"{path} is not a finished run directory: no summary.json{hint}.")
    record = RunRecord(path, json.loads(summary_path.read_text()))
    metrics = path / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("step"):
                    continue
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        record.curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return record


def _interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    if not points:
        return None
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def first_reach(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first x where the curve reaches ``target`` or below, linearly interpolated; None if never."""
    previous: tuple[float, float] | None = None
    for x, y in points:
        if y <= target:
            if previous is None or previous[1] == y:
                return x
            x0, y0 = previous
            return x0 + (x - x0) * (y0 - target) / (y0 - y)
        previous = (x, y)
    return None


def comparison_rows(runs: Sequence[RunRecord], target: float | None = None) -> tuple[list[str], list[list[str]], float]:
    """``(header, rows, target)``: one row per figure, one column per run.

    ``target`` defaults to the highest final validation loss among the runs (a
    loss every run reached); time and steps to it come from the validation curve.
    """
    finals = [r.summary.get("val_loss") for r in runs]
    if target is None:
        reached = [f for f in finals if isinstance(f, (int, float))]
        target = max(reached) if reached else math.nan
    header = ["", *[f"run {i + 1}" for i in range(len(runs))]]
    rows: list[list[str]] = [["run", *[str(r.path) for r in runs]]]

    def add(name: str, values: Sequence[Any]) -> None:
        if any(v is not None for v in values):
            rows.append([name, *[format_value(v) for v in values]])

    for key in ("recipe", "plugins", "steps", "train_loss", "val_loss", "time_s"):
        add(key, [r.summary.get(key) for r in runs])
    for key in sorted({k for r in runs for k in r.summary if k.endswith("_per_s")}):
        add(key, [r.summary.get(key) for r in runs])
    for key in sorted({k for r in runs for k in (r.summary.get("metrics") or {})}):
        add(key, [(r.summary.get("metrics") or {}).get(key) for r in runs])
    steps_to = [first_reach(r.curves.get("val/loss", []), target) for r in runs]
    add(f"steps_to_val_loss<={target:.4g}", steps_to)
    add(
        f"train_s_to_val_loss<={target:.4g}",
        [r.seconds_at(s) if s is not None else None for r, s in zip(runs, steps_to)],
    )
    plugins = sorted({p for r in runs for p in (r.summary.get("plugin_figures") or {})})
    for plugin in plugins:
        names = sorted({n for r in runs for n in (r.summary.get("plugin_figures") or {}).get(plugin, {})})
        for name in names:
            add(f"{plugin}.{name}", [(r.summary.get("plugin_figures") or {}).get(plugin, {}).get(name) for r in runs])
    return header, rows, target


def plot_losses(runs: Sequence[RunRecord], out: Path, title: str = "") -> Path:
    """Training and validation loss over steps (left) and over training time (right), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for index, run in enumerate(runs):
        colour = f"C{index}"
        for metric, style in (
            ("train/loss", {"alpha": 0.35, "linewidth": 1}),
            ("val/loss", {"marker": "o", "markersize": 3}),
        ):
            points = run.curves.get(metric, [])
            if not points:
                continue
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            label = f"{run.label} {metric.split('/')[0]}"
            by_step.plot(steps, values, color=colour, label=label, **style)
            seconds = [run.seconds_at(s) for s in steps]
            if all(t is not None for t in seconds):
                by_time.plot(seconds, values, color=colour, label=label, **style)
    by_step.set_xlabel("training step")
    by_time.set_xlabel("training time (s, validation excluded)")
    for axis in (by_step, by_time):
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    figure.suptitle(title or "loss")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_run(run: RunRecord, out: Path) -> Path:
    """One run's curves: losses, then each other logged metric in its own panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"train/loss", "val/loss", "time/train_s"}
    others = [k for k in sorted(run.curves) if k not in skip and len(run.curves[k]) > 1]
    panels = 1 + len(others)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 3.8 * rows), constrained_layout=True, squeeze=False
    )
    flat = [a for row in axes for a in row]
    for metric, style in (
        ("train/loss", {"alpha": 0.5, "linewidth": 1}),
        ("val/loss", {"marker": "o", "markersize": 3}),
    ):
        points = run.curves.get(metric, [])
        if points:
            flat[0].plot([s for s, _ in points], [v for _, v in points], label=metric, **style)
    flat[0].set_title("loss")
    flat[0].legend(fontsize=8)
    for axis, metric in zip(flat[1:], others):
        points = run.curves[metric]
        axis.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 30 else None)
        axis.set_title(metric)
    for axis in flat[:panels]:
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    for axis in flat[panels:]:
        axis.set_visible(False)
    figure.suptitle(run.label)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
