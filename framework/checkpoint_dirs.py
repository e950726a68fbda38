"""Checkpoint directories by name: which exist, which are complete, which is newest.

Paths only, no torch: a ``launcher.nproc=N`` supervisor picks the run directory
(and the checkpoint ``checkpoint.resume=auto`` continues) before it starts its
ranks, and importing torch for that would delay every rank by its import time.
The format itself is :mod:`jevons.framework.checkpoint`'s.
"""

from __future__ import annotations

import re
from pathlib import Path

from jevons.framework.errors import UsageError

__all__ = ["LATEST", "MARKER", "checkpoint_name", "complete_checkpoints", "is_complete", "latest_checkpoint", "step_of"]

MARKER = "COMPLETE"
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: Path) -> int:
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint directory name")
    return int(match.group(1))


def is_complete(path: Path) -> bool:
    return bool(_NAME.match(Path(path).name)) and (Path(path) / MARKER).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=step_of)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint; None if there is none; an error if only incomplete ones exist.

    Completeness is read from the markers, not from ``latest`` (which is for
    people and tools), so a crash between the rename and the pointer update
    loses nothing.
    """
    complete = complete_checkpoints(root)
    if complete:
        return complete[-1]
    leftovers = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if any(name.startswith((".step_", "step_")) for name in leftovers):
        raise UsageError(
            f"Every checkpoint under {root} is incomplete ({', '.join(leftovers)}); refusing to start over. "
            f"Remove the folder to train from scratch, or point checkpoint.resume at a complete checkpoint."
        )
    return None
