"""Reading users' inputs as streams: folders walked in sorted order, compressed text, manifests row by row.

A jsonl file is read line by line, a parquet file a record batch at a time
(``pyarrow.parquet.ParquetFile.iter_batches``, only the columns asked for), a CSV with
:mod:`csv`; only a ``.json`` array is read whole, as the tool that wrote it held it.
Compression is decided by the file name (``.gz`` with :mod:`gzip`, ``.zst`` with
``zstandard``: Python 3.11 has no zstd); a compressed stream cut short raises
``EOFError`` either way. Errors a user can fix raise
:class:`~jevons.framework.errors.UsageError`; a damaged row or file is the caller's to skip.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

from jevons.framework.errors import UsageError

COMPRESSIONS = (".gz", ".zst")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def base_suffix(path: Path) -> str:
    """The suffix under any compression: ``docs.jsonl.gz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def walk(inputs: Sequence[Path], suffixes: Sequence[str] | None = None) -> Iterator[Path]:
    """The files of ``inputs``: files as given, folders recursively in sorted order (symbolic links
    followed, each real folder once; hidden entries skipped); with ``suffixes``, only files whose
    :func:`base_suffix` is one of them. A folder that cannot be read is a usage error, not a silent gap."""

    def unreadable(error: OSError) -> None:
        raise UsageError(f"Cannot read {error.filename}: {error.strerror}. Fix its permissions or leave it out.")

    for path in inputs:
        if path.is_dir():
            visited: set[str] = set()
            for directory, folders, files in os.walk(path, onerror=unreadable, followlinks=True):
                real = os.path.realpath(directory)
                if real in visited:  # a link back up the tree: walked already
                    folders[:] = []
                    continue
                visited.add(real)
                folders[:] = sorted(f for f in folders if not f.startswith("."))
                for name in sorted(files):
                    file = Path(directory) / name
                    if not name.startswith(".") and (suffixes is None or base_suffix(file) in suffixes):
                        yield file
        elif suffixes is None or base_suffix(path) in suffixes:
            yield path


def file_size(path: Path) -> int:
    """``path``'s size, 0 for one that cannot be stat-ed (a dangling link: reading it is skipped and counted)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_inputs(inputs: Sequence[str]) -> list[Path]:
    """The inputs as absolute paths; a path that does not exist is a usage error (not a skip)."""
    if not inputs:
        raise UsageError("No inputs: give files or folders after the kind, e.g. jevons data import text docs/ out=DIR")
    paths = [Path(p).expanduser().resolve() for p in inputs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"Input(s) not found: {', '.join(missing)}. Give existing files or folders.")
    return paths


def open_binary(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading bytes, decompressed by its name (``.gz``, ``.zst``)."""
    return _open(path)[0]


def _open(path: Path) -> tuple[io.BufferedIOBase, IO[bytes]]:
    """The decompressed stream and the file on disk under it (whose position is the progress)."""
    raw = open(path, "rb")
    suffix = path.suffix.lower()
    if suffix == ".gz":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if suffix == ".zst":
        import zstandard

        return io.BufferedReader(_ZstdReader(raw, zstandard.ZstdDecompressor().decompressobj())), raw
    return raw, raw


class _ZstdReader(io.RawIOBase):
    """A zstd stream decompressed as it is read; unlike ``ZstdDecompressor.stream_reader``, a stream that
    ends inside a frame raises ``EOFError`` (as gzip does) instead of ending quietly short."""

    def __init__(self, raw: IO[bytes], decompressor: Any) -> None:
        self.raw = raw
        self.decompressor = decompressor
        self.fed = False  # the current frame's decompressor has been given bytes
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        import zstandard

        while not self.pending:
            if self.decompressor.eof:  # a frame ended; zstd allows another after it
                leftover = self.decompressor.unused_data
                self.decompressor, self.fed = zstandard.ZstdDecompressor().decompressobj(), False
                if leftover:
                    self.pending, self.fed = self.decompressor.decompress(leftover), True
                    continue
            chunk = self.raw.read(1 << 16)
            if not chunk:
                if self.fed and not self.decompressor.eof:
                    raise EOFError("zstd stream ended before the end of its frame (the file is cut short)")
                return 0
            self.pending, self.fed = self.decompressor.decompress(chunk), True
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


Row = tuple[int, dict[str, Any] | Exception, int]
"""``(row_number, fields or the error that row raised, bytes of the file on disk read so far)``."""


def read_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[Row]:
    """A manifest's rows, streamed (:data:`Row`); a row that does not parse comes as its error.

    ``.jsonl``: one JSON object per line. ``.json``: one array of objects (FastVideo's
    ``videos2caption.json``) or JSON lines. ``.csv``: a header row, then rows (Open-Sora, MUG-V).
    ``.parquet``: rows of ``columns`` (all if None), a record batch at a time. A file that cannot be
    opened as its format comes as one error row (row 0).
    """
    import json

    suffix = base_suffix(path)
    if suffix == ".parquet":
        yield from _parquet_rows(path, columns)
        return
    stream, raw = _open(path)
    with stream, raw:
        if suffix == ".csv":
            import csv

            text = io.TextIOWrapper(cast("IO[bytes]", stream), encoding="utf-8", newline="")
            for number, fields in enumerate(csv.DictReader(text), 1):
                yield number, dict(fields), raw.tell()
        elif suffix == ".json" and cast("io.BufferedReader", stream).peek(4096)[:4096].lstrip().startswith(b"["):
            try:
                rows = json.load(stream)  # one array, as the tool that wrote it held it
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise UsageError(f"{path} is not valid JSON: {error}. Expected an array of objects.") from None
            if not isinstance(rows, list):
                raise UsageError(f"{path} holds a JSON {type(rows).__name__}; expected an array of objects.")
            for number, row in enumerate(rows, 1):
                yield number, row if isinstance(row, dict) else ValueError(f"row {number} is not an object"), raw.tell()
        else:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    yield number, error, raw.tell()
                    continue
                parsed = value if isinstance(value, dict) else ValueError(f"line {number} is not a JSON object")
                yield number, parsed, raw.tell()


def _parquet_rows(path: Path, columns: Sequence[str] | None) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError...: all mean "not a parquet file"
        yield 0, ValueError(f"not a readable parquet file: {error}"), file_size(path)
        return
    present = [c for c in columns if c in table.schema_arrow.names] if columns is not None else None
    size, rows = file_size(path), max(1, table.metadata.num_rows)
    number = 0
    for batch in table.iter_batches(batch_size=1024, columns=present):
        for row in batch.to_pylist():
            number += 1
            yield number, row, size * number // rows


def first_field(row: dict[str, Any], names: Sequence[str]) -> tuple[str, Any] | None:
    """The first of ``names`` present (and not null) in ``row``, as ``(name, value)``."""
    for name in names:
        if row.get(name) is not None:
            return name, row[name]
    return None
