"""Plain-text tables for the terminal: the CLI's listings, the run's plugin figures, ``jevons compare``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header, no trailing spaces."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """Floats to 4 significant digits, missing values as ``-``, the rest as ``str``."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
