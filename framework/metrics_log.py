"""``metrics.csv``: one row per logged step, appended, never deleted.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its folder
is not empty, which is exactly the case when a run resumes into its own
directory. This logger appends instead; on resume it first drops the rows at
or after the resumed step (they belong to a timeline that was abandoned and
is about to be logged again), so the file always describes one run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only


class MetricsCSV(Logger):
    """Rows reach the file as they are logged: a killed run keeps every row it logged."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._pending: list[dict[str, Any]] = []
        self._keys: list[str] = []
        if self.path.exists():
            rows = self._read()
            if resume_step is not None:
                rows = [row for row in rows if row.get("step", "") == "" or int(row["step"]) < resume_step]
            self._keys = list(rows[0].keys()) if rows else []
            self._rewrite(rows)

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is in config.yaml already."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row: dict[str, float | int | str] = {k: float(v) for k, v in metrics.items()}
        row["step"] = step if step is not None else ""
        self._pending.append(row)
        self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._pending:
            return
        new_keys = sorted({k for row in self._pending for k in row} - set(self._keys))
        if new_keys:
            old = self._read() if self.path.exists() else []
            self._keys = ["step", *sorted((set(self._keys) | set(new_keys)) - {"step"})]
            self._rewrite(old)
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._keys).writerows(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def _read(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._keys or ["step"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)
