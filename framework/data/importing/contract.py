"""What an importer is: the contract between ``jevons data import`` and the family that answers a kind.

A family lists its importers (``Family.importers()``); each answers one kind of input
(``text``, ``images``, ``videos``, ``audio``) for that family. The framework's engine
(:mod:`jevons.framework.data.importing.engine`) owns everything a kind shares: the
``key=value`` options, streaming, workers, resumption, the split over ranks, duplicates,
the validation split, the skip report and the shard index. An importer owns only what is
particular to its kind:

* :meth:`Importer.preflight` refuses what can never be imported (a missing tokenizer, inputs of
  which none is usable) before anything is written;
* :meth:`Importer.records` streams the inputs as :class:`Record` s, in one deterministic
  order, reading as little as it can (a path and a caption; a document's text): it runs in
  the main process of every rank, which decide duplicates and splits from it;
* :meth:`Importer.prepare` builds what every worker needs before any shard is written
  (a tokenizer trained on the whole input), once, on rank 0;
* :meth:`Importer.convert` turns one record into samples (decoding, resizing, tokenising)
  in a worker process, or raises :class:`Skipped` with a reason;
* :meth:`Importer.describe` writes what the family reads back (``meta.json``: vocabulary,
  channels, resolution, sample rate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from jevons.framework.config.schema import require
from jevons.framework.data.media import REASONS as MEDIA_REASONS
from jevons.framework.data.media import MediaError

REASONS = (*MEDIA_REASONS, "missing field", "empty text", "empty caption", "no response", "duplicate")
"""Why an input was skipped; ``import_report.json`` counts each. A decoder's :class:`MediaError` reasons
(missing file, undecodable, truncated, too short, too long) and what reading records finds (a conversation
with no assistant message to learn is ``no response``)."""


class Skipped(MediaError):
    """An input that does not become a sample: ``reason`` (one of :data:`REASONS`) and what was found.
    A :class:`MediaError` a decoder raises is one too (a narrower set of reasons)."""

    reasons = REASONS


@dataclass(frozen=True)
class Record:
    """One input, as :meth:`Importer.records` streams it.

    :param key: unique and stable (a rerun names it the same); the samples' webdataset keys start with it.
    :param source: where it came from, for the report and ``val_files``: the input file's absolute path,
        then ``:line`` or ``:row`` for a record of a multi-record file.
    :param payload: what :meth:`Importer.convert` needs; it is pickled to a worker, so keep it small
        (a document's text, a path and a caption, never decoded pixels).
    :param identity: a hash of the content: equal identities are duplicates (the first is kept), and
        it decides the validation split, so every rank of a distributed import decides alike.
    :param size: bytes read, for the progress bar.
    :param skip: set when reading already found it bad (a missing file, an undecodable line).
    :param split: set when the input already belongs to a split (``train`` or ``val``: a precompute of an
        import keeps the import's); otherwise the engine decides by ``val_files`` or content hash.
    """

    key: str
    source: str
    payload: Any = None
    identity: bytes | None = None
    size: int = 0
    skip: Skipped | None = None
    split: str | None = None


@dataclass(frozen=True)
class Converted:
    """One sample of a record: webdataset fields (extension-named), its lengths, and a key suffix
    (a video gives one sample per clip: ``-c0``, ``-c1``...)."""

    fields: dict[str, Any]
    lengths: Sequence[int]
    suffix: str = ""


@dataclass
class ImportOptions:
    """Options every kind takes (``key=value`` on the command line).

    ``out``, ``workers``, ``progress``, ``strict`` and ``max_skipped_fraction`` do not change what is
    written, so a rerun may change them; any other change into a finished or started folder is refused.
    """

    out: str = ""
    """The folder to write (required): shards, ``train.json``/``val.json``, ``meta.json``, ``import_report.json``."""
    workers: int | None = None
    """Worker processes per rank (null: the cores divided by the ranks; 0: convert in the main process)."""
    val_fraction: float = 0.05
    """Fraction of inputs held out for validation, chosen by content hash."""
    val_files: list[str] = field(default_factory=list)
    """Input files (or folders) whose records all go to validation; with it, ``val_fraction`` is not used."""
    records_per_shard: int = 1000
    """Inputs per shard: the unit of work, of resumption and of the split over ranks."""
    strict: bool = False
    """Stop at the first bad input, naming it; otherwise skip it and count it by reason."""
    max_skipped_fraction: float = 0.1
    """Abort once more than this fraction of the inputs is skipped (duplicates included)."""
    progress: bool = True

    UNCHANGING: ClassVar[frozenset[str]] = frozenset({"out", "workers", "progress", "strict", "max_skipped_fraction"})
    """Options that do not change the output (left out of the fingerprint)."""
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = ("val_files",)
    """Options naming files or folders: resolved to absolute paths, and their contents fingerprinted."""

    def __post_init__(self) -> None:

        for key in self.PATH_OPTIONS:  # absolute, so a rerun from another folder means the same files
            value = getattr(self, key)
            if isinstance(value, list):
                setattr(self, key, [str(Path(v).expanduser().resolve()) for v in value])
            elif value is not None:
                setattr(self, key, str(Path(value).expanduser().resolve()))
        require(bool(self.out), "out", self.out, "the folder to import into: out=DIR")
        require(self.workers is None or self.workers >= 0, "workers", self.workers, "0 or more, or null")
        require(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "a number in [0, 1)")
        require(self.records_per_shard >= 1, "records_per_shard", self.records_per_shard, "a positive integer")
        require(
            0 <= self.max_skipped_fraction <= 1, "max_skipped_fraction", self.max_skipped_fraction, "a number in [0, 1]"
        )


OptionsT = TypeVar("OptionsT", bound=ImportOptions)


class Importer(ABC, Generic[OptionsT]):
    """One kind of input for one family. Subclasses set the class attributes and implement
    :meth:`records` and :meth:`convert`; instances are pickled to worker processes."""

    kind: ClassVar[str]
    """What goes in: ``text``, ``images``, ``videos``, ``audio``."""
    family: ClassVar[str]
    """The family whose recipes train on the output."""
    description: ClassVar[str]
    """One line for ``jevons data import --help``."""
    options_class: ClassVar[type[ImportOptions]]
    length_names: ClassVar[tuple[str, ...]]
    """The index's lengths per sample (the batch samplers read them)."""
    default_for_kind: ClassVar[bool] = True
    """False where another family's importer of the same kind should answer unless ``family=`` names this one."""
    version: ClassVar[int] = 1
    """Bump when the output of the same inputs and options changes: the fingerprint includes it."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def input_bytes(self, inputs: Sequence[Path]) -> int:
        """The bytes :meth:`records` will read (the progress bar's total); the input files' sizes."""
        from jevons.framework.data.importing.inputs import walk

        return sum(path.stat().st_size for path in walk(inputs))

    def preflight(self, inputs: Sequence[Path]) -> None:
        """Before anything is written into ``out``, on every rank: raise :class:`~jevons.framework.errors.UsageError`
        for options or inputs this kind can never import (a tokenizer folder without its tokenizer, inputs of which
        none can become a sample), so the mistake leaves no folder behind. Keep it cheap: stop reading at the first
        input that shows the import can go ahead."""

    @abstractmethod
    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        """Every input in one deterministic order, streamed (bounded memory whatever the corpus)."""

    def prepare(self, out: Path, records: Callable[[], Iterator[Record]], progress: bool) -> None:
        """Before any shard: write what workers need into ``out`` (atomically: a temp name, then rename),
        or nothing if it is there already. Runs once, on rank 0; ``records()`` streams the inputs again."""

    def start_worker(self, out: Path) -> None:
        """In each worker before its first :meth:`convert` (load what :meth:`prepare` wrote)."""

    @abstractmethod
    def convert(self, record: Record) -> list[Converted]:
        """The record's samples; raise :class:`Skipped` for an input that cannot be one (a decoder's
        :class:`MediaError`, which it extends, may pass through: it is counted the same way)."""

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        """Add a written sample to its shard's JSON-able ``stats``; :meth:`describe` receives every shard's."""

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """What ``meta.json`` records for the family (vocabulary size, channels, resolution...)."""
        return {}
