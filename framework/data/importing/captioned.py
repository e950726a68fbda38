"""Captioned media as records: a folder with sidecar captions, or a manifest in one of the ecosystem's layouts.

The layouts accepted, by what names a row's file and caption:

* a **folder** of media files, each with an optional sidecar ``name.txt`` caption (or transcript);
* a folder holding Hugging Face imagefolder's ``metadata.jsonl`` (or ``.csv``): ``file_name``, ``text``;
* a **manifest** (``.jsonl``, ``.json``, ``.csv`` or ``.parquet``) of path and caption: FastVideo's
  ``videos2caption.json`` (``path``, ``cap``: a caption or a list of them, the first is taken),
  Open-Sora's and MUG-V's CSVs (``path``, ``text``), NeMo's audio manifests (``audio_filepath``,
  ``text``, ``duration``, ``offset``). Paths resolve relative to the manifest's folder.

An optional ``label`` column (an integer class) is carried along. A record's identity hashes
the file's bytes with its caption, label and offset: the same file captioned the same way twice
is a duplicate. The file is read here (on every rank of a distributed import), which costs far
less than decoding it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jevons.framework.data.importing.contract import Record, Skipped
from jevons.framework.data.importing.inputs import (
    MANIFEST_SUFFIXES,
    base_suffix,
    file_size,
    first_field,
    read_rows,
    walk,
)

PATH_FIELDS = ("file_name", "path", "audio_filepath", "video_path", "video", "image", "filepath", "file")
CAPTION_FIELDS = ("text", "caption", "cap", "captions", "prompt", "transcript")
SIDECAR_SUFFIXES = (".txt", ".json")
"""Files beside the media that belong to them (a caption; img2dataset's per-sample metadata), not inputs."""
FOLDER_MANIFESTS = ("metadata.jsonl", "metadata.csv")
"""Hugging Face imagefolder's manifest names: a folder holding one is read through it."""


def media_records(
    inputs: Sequence[Path],
    media_suffixes: Sequence[str],
    *,
    caption_field: str | None = None,
    path_field: str | None = None,
    label_field: str = "label",
    require_caption: bool = True,
) -> Iterator[Record]:
    """Records whose payload is ``{"path", "caption", "label", "offset", "duration"}`` (see the module docstring)."""
    for item in inputs:
        manifest = next((item / name for name in FOLDER_MANIFESTS if (item / name).is_file()), None)
        if item.is_dir() and manifest is not None:
            yield from _manifest_records(manifest, caption_field, path_field, label_field, require_caption)
        elif item.is_dir():
            for path in walk([item]):
                if base_suffix(path) in media_suffixes:
                    yield _sidecar_record(path, require_caption)
                elif path.suffix.lower() not in SIDECAR_SUFFIXES:
                    yield Record(path.stem, str(path), skip=Skipped("undecodable", _not_media(media_suffixes)))
        elif base_suffix(item) in MANIFEST_SUFFIXES:
            yield from _manifest_records(item, caption_field, path_field, label_field, require_caption)
        elif base_suffix(item) in media_suffixes:
            yield _sidecar_record(item, require_caption)
        else:
            yield Record(item.stem, str(item), skip=Skipped("undecodable", _not_media(media_suffixes)))


def _not_media(suffixes: Sequence[str]) -> str:
    return f"not a manifest ({', '.join(MANIFEST_SUFFIXES)}) or a media file ({', '.join(suffixes)})"


def _sidecar_record(path: Path, require_caption: bool) -> Record:
    sidecar = path.with_suffix(".txt")
    try:
        caption = sidecar.read_text(encoding="utf-8-sig").strip() if sidecar.is_file() else ""
    except (OSError, UnicodeDecodeError) as error:
        return Record(path.stem, str(path), skip=Skipped("undecodable", f"caption {sidecar.name}: {error}"))
    return _record(path.stem, str(path), path, caption, None, 0.0, None, require_caption)


def _manifest_records(
    manifest: Path, caption_field: str | None, path_field: str | None, label_field: str, require_caption: bool
) -> Iterator[Record]:
    number = 0
    try:
        for number, row in _manifest_rows(manifest):
            yield _row_record(manifest, number, row, caption_field, path_field, label_field, require_caption)
    except EOFError as error:  # a cut .jsonl.gz: the rows before it are kept
        yield Record(f"{manifest.stem}-{number + 1}", f"{manifest}:{number + 1}", skip=Skipped("truncated", str(error)))
    except Exception as error:  # a damaged parquet page, a CSV that is not UTF-8: the rest of the manifest
        detail = f"{type(error).__name__}: {error}; the manifest's remaining rows were not read"
        yield Record(f"{manifest.stem}-{number + 1}", f"{manifest}:{number + 1}", skip=Skipped("undecodable", detail))


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    for number, row, _ in read_rows(manifest):
        yield number, row


def _row_record(
    manifest: Path,
    number: int,
    row: dict[str, Any] | Exception,
    caption_field: str | None,
    path_field: str | None,
    label_field: str,
    require_caption: bool,
) -> Record:
    path_fields = (path_field,) if path_field else PATH_FIELDS
    caption_fields = (caption_field,) if caption_field else CAPTION_FIELDS
    source, key = f"{manifest}:{number}", f"{manifest.stem}-{number}"
    if isinstance(row, Exception):
        return Record(key, source, skip=Skipped("undecodable", str(row)))
    found = first_field(row, path_fields)
    if found is None or not isinstance(found[1], str) or not found[1]:
        return Record(key, source, skip=Skipped("missing field", f"no file path ({', '.join(path_fields)})"))
    path = (manifest.parent / found[1]).resolve()
    caption = _caption(first_field(row, caption_fields))
    label = _integer(row.get(label_field))
    if label is not None and label < 0:
        return Record(key, source, skip=Skipped("undecodable", f"{label_field}={row[label_field]!r} is not a class"))
    offset, duration = _seconds(row.get("offset")), _seconds(row.get("duration"))
    if (offset is not None and offset < 0) or (duration is not None and duration <= 0):
        found_times = f"offset={row.get('offset')!r}, duration={row.get('duration')!r}"
        return Record(key, source, skip=Skipped("undecodable", f"{found_times}: expected seconds, offset >= 0"))
    return _record(f"{key}-{path.stem}", source, path, caption, label, offset or 0.0, duration, require_caption)


def _integer(value: Any) -> int | None:
    """A class label: None when absent, -1 when not an integer (the caller skips it)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return -1
    try:
        return int(value)
    except ValueError:
        return -1


def _seconds(value: Any) -> float | None:
    """A time in seconds: None when absent, -1.0 when not a number (the caller skips it)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0


def _caption(found: tuple[str, Any] | None) -> str:
    if found is None:
        return ""
    value = found[1]
    if isinstance(value, list):  # FastVideo's "cap": a list of captions
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return str(value).strip()


def _record(
    key: str,
    source: str,
    path: Path,
    caption: str,
    label: int | None,
    offset: float,
    duration: float | None,
    require_caption: bool,
) -> Record:
    if not path.is_file():
        return Record(key, source, skip=Skipped("missing file", f"{path} does not exist"))
    if require_caption and not caption:
        return Record(key, source, skip=Skipped("empty caption", f"no caption for {path.name}"))
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:  # unreadable (permissions): this file's skip, on every rank alike
        return Record(key, source, skip=Skipped("undecodable", f"{path}: {error.strerror or error}"))
    digest.update(f"\0{caption}\0{label}\0{offset}\0{duration}".encode())
    payload = {"path": str(path), "caption": caption, "label": label, "offset": offset, "duration": duration}
    return Record(key, source, payload=payload, identity=digest.digest(), size=file_size(path))


def media_bytes(inputs: Sequence[Path], media_suffixes: Sequence[str], path_field: str | None = None) -> int:
    """The bytes of the media files :func:`media_records` will read (the progress bar's total), by ``stat``."""
    total = 0
    path_fields = (path_field,) if path_field else PATH_FIELDS
    for item in inputs:
        manifest = next((item / name for name in FOLDER_MANIFESTS if (item / name).is_file()), None)
        if item.is_dir() and manifest is None:
            total += sum(file_size(p) for p in walk([item]) if base_suffix(p) in media_suffixes)
            continue
        if item.is_file() and base_suffix(item) not in MANIFEST_SUFFIXES:
            total += file_size(item)
            continue
        try:
            for _, row in _manifest_rows(manifest or item):
                found = None if isinstance(row, Exception) else first_field(row, path_fields)
                path = ((manifest or item).parent / str(found[1])) if found else None
                total += file_size(path) if path is not None else 0
        except Exception:  # a damaged manifest: media_records counts it; the bar's total is an estimate
            continue
    return total
