"""What every Jevons command shares: user mistakes end with a message and exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from jevons.framework.errors import UsageError


def guarded(command: Callable[[], int]) -> int:
    """Run ``command``; a :class:`UsageError` prints ``error: ...`` and returns its exit code.

    ``JEVONS_DEBUG=1`` lets the exception through, traceback and all.
    """
    try:
        return command()
    except UsageError as error:
        if os.environ.get("JEVONS_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
