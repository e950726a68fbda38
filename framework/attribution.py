"""Per-plugin attribution: what each plugin changed in a run and what that cost or saved, measured in the run.

Composer records that an algorithm ran; Jevons reports what it bought. A
plugin takes part by registering (through ``register_callbacks``) a Lightning
callback that also satisfies :class:`PluginReport`: it measures during
training (its own timers, its own counters) and ``report()`` returns flat
figures at the end. By convention the class lives in the plugin package's
``report.py``. The summary prints them as a table and writes them to
``summary.json`` under ``plugin_figures``; ``jevons compare`` lines them up
across runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from jevons.framework.text_table import format_table, format_value

Figure = float | int | str


@runtime_checkable
class PluginReport(Protocol):
    """A callback that reports figures for one plugin.

    The class defines ``report()`` only. ``plugin`` is the name of the plugin that
    registered the callback: once the enabled plugins' ``register_callbacks`` have run,
    the framework sets it on each registered callback that has a ``report`` method and
    no ``plugin`` of its own (:func:`jevons.framework.build.plugin_callbacks`), so a
    report never repeats its plugin's name and one plugin's several reporters are filed
    under the same name.
    """

    plugin: str
    """Set by the framework at registration: the registering plugin's name."""

    def report(self) -> dict[str, Figure]:
        """Flat ``name -> value``; names say the unit (``_ms``, ``_s``, ``_fraction``, ``_per_s``)."""
        ...


def collect(callbacks: Iterable[Any]) -> dict[str, dict[str, Figure]]:
    """Every reporting callback's figures, by plugin; one plugin's several reporters are merged."""
    figures: dict[str, dict[str, Figure]] = {}
    for callback in callbacks:
        if isinstance(callback, PluginReport):
            figures.setdefault(callback.plugin, {}).update(callback.report())
    return figures


def format_figures(figures: dict[str, dict[str, Figure]]) -> str:
    """A ``plugin | figure | value`` table; empty when no plugin reported."""
    rows = [(plugin, name, format_value(value)) for plugin, named in figures.items() for name, value in named.items()]
    return format_table(("plugin", "figure", "value"), rows) if rows else ""


class TrainStepTimer:
    """Wall time of training steps (forward, backward, optimizer; validation excluded), for shares."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.seconds += time.perf_counter() - self._start
        self.steps += 1
