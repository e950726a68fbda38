"""What every Jevons command shares: user mistakes end with a message and exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from jevons.framework.errors import JevonsError


def guarded(command: Callable[[], int]) -> int:
    """Run ``command``; a :class:`JevonsError` prints ``error: ...`` and returns its exit code.

    ``JEVONS_DEBUG=1`` lets the exception through, traceback and all.
    """
    try:
        return command()
    except JevonsError as error:
        if os.environ.get("JEVONS_DEBUG"):
            raise
        print(f"error: {_message(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _message(error: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, without the worker's traceback."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
