"""Built-in data, generated on first use into ``$JEVONS_DATA`` (default ``~/.cache/jevons``).

A source is built into a temporary folder and renamed into place only when
complete, under a file lock, so concurrent ranks or runs build it once and a
crash mid-build leaves nothing that looks finished.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from jevons.framework.errors import UsageError, did_you_mean, format_choices
from jevons.framework.family import DataSource

COMPLETE = "COMPLETE"


def data_root(configured: str | None = None) -> Path:
    """Where built-in data lives: the config's ``data.root``, else ``$JEVONS_DATA``, else ``~/.cache/jevons``."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("JEVONS_DATA") or Path.home() / ".cache" / "jevons").expanduser()


def resolve_source(source: str, root: Path, sources: Mapping[str, DataSource], progress: bool = True) -> Path:
    """The folder holding a split's index files: a built-in source (built if missing) or a user's folder."""
    if source in sources:
        return ensure_built(sources[source], root, progress)
    path = Path(source).expanduser()
    if source.strip() and path.is_dir():  # Path("") is the current directory: an empty source is a mistake
        return path
    raise UsageError(
        f"data.source={source!r} is neither a built-in data source nor a folder of shard indexes."
        f"{did_you_mean(source, sources)} Built-in sources: {format_choices(sources)}; "
        f"a folder must hold train.json and val.json written by jevons.framework.data.write_shards."
    )


def ensure_built(source: DataSource, root: Path, progress: bool = True) -> Path:
    """Build ``source`` under ``root`` unless a complete copy exists; return its folder."""
    final = root / f"{source.name}-v{source.version}"
    if (final / COMPLETE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{source.name}.lock"):
        if (final / COMPLETE).exists():  # another process built it while we waited
            return final
        temporary = root / f".{source.name}-v{source.version}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        if progress:
            print(f"jevons: building data '{source.name}' into {final} (first use)", file=sys.stderr, flush=True)
        try:
            source.build(temporary, progress)
            (temporary / COMPLETE).write_text(f"{source.name} v{source.version}\n")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete copy from a crashed build
            os.replace(temporary, final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return final


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
