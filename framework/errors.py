"""The one error type for user mistakes, and helpers that make its messages useful.

A :class:`UsageError` is shown without a traceback and ends the command with
exit code 2. Its message says what was given, what was expected, and how to fix
it (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JevonsError(Exception):
    """An error the commands report as one message, no traceback, with ``exit_code``."""

    exit_code = 1


class UsageError(JevonsError):
    """A mistake in what the user asked for: config, command line, data, plugin."""

    exit_code = 2


class DataError(UsageError):
    """Data that cannot be read: a corrupt sample, a truncated shard, a duplicate key, too many losses."""


class TrainingStopped(JevonsError):
    """Training stopped on purpose: a non-finite loss or gradient under ``trainer.nonfinite=stop``."""


class ModelInputError(JevonsError):
    """A model component given inputs it cannot take (a shape mismatch inside a run). The message names
    the component and both shapes; ``train`` adds the recipe."""


class PluginError(UsageError):
    """A plugin failed inside one of its hooks; the message names plugin and hook."""

    def __init__(self, plugin: str, hook: str, cause: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        super().__init__(
            f"plugin '{plugin}' failed in hook '{hook}': {type(cause).__name__}: {cause}\n"
            f"Disable it (remove it from plugins: or set JEVONS_DISABLE_PLUGIN_AUTOLOAD=1) "
            f"or report it to its authors; set JEVONS_DEBUG=1 for the traceback."
        )


def did_you_mean(given: str, choices: Iterable[str], prefix: str = "") -> str:
    """Return ``" Did you mean '<prefix>x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(given, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


def format_choices(choices: Iterable[str]) -> str:
    """Sorted, comma-separated choices for an error message."""
    names = sorted(choices)
    return ", ".join(names) if names else "(none)"
