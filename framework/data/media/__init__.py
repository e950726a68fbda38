"""Decoding users' media files (images, video, audio) into samples during ``jevons data import``.

A user's folder holds files of every kind and state: valid ones, files cut short
by an interrupted copy, files with the wrong extension, clips shorter than a
training clip. The import must not stop at the first bad file, nor hide what it
skipped: each decoder turns every way a file can fail into one :class:`MediaError`
whose ``reason`` is one of the fixed :data:`REASONS`, so the import's report can
count skipped files by reason and name a few of each, and a caller never has to
know which library (Pillow, PyAV, libsndfile) raised what.

The submodules (:mod:`.images`, :mod:`.videos`, :mod:`.audio`) import their
libraries at top level: only import workers load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["REASONS", "MediaError", "require_file"]

REASONS: Final[tuple[str, ...]] = ("missing file", "undecodable", "truncated", "too short", "too long")
"""Why a file cannot become a sample; the import report counts skipped files by these."""


class MediaError(Exception):
    """A file that cannot become a sample; ``reason`` is one of REASONS, ``detail`` says what was found."""

    reasons: tuple[str, ...] = REASONS
    """The reasons this class takes (:class:`~jevons.framework.data.importing.Skipped` takes more)."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in self.reasons:
            raise ValueError(f"{type(self).__name__} reason {reason!r} is not one of {self.reasons}")
        # Both go to Exception.args, so the error pickles back from an import worker process intact.
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def require_file(path: Path) -> None:
    """Raise "missing file" unless ``path`` is a file. Checked first: libsndfile, for one, reports a missing
    file as "System error", indistinguishable from others."""
    if not path.is_file():
        raise MediaError("missing file", f"{path} does not exist" if not path.exists() else f"{path} is not a file")
