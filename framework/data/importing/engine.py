"""``jevons data import``'s engine: inputs to indexed shards, streamed, resumable, split over ranks.

The inputs are one stream of :class:`~jevons.framework.data.importing.contract.Record` s
in a fixed order, cut into chunks of ``records_per_shard``. Chunk ``k`` becomes
``train-k.tar`` and ``val-k.tar`` and a part file (``.import/parts/k.json``: the
shards' sample counts and lengths, and every skipped input with its reason), written
by one worker process of rank ``k % world_size``. Every rank streams every record and
so takes the same decisions on its own: a record whose content hash was seen earlier
is a duplicate, and the hash picks the validation split. Only the chunk's owner
converts it.

Nothing partial is ever visible: a shard is written under a temporary name and
renamed, its part file is written after its shards, and the index (``val.json``,
then ``train.json``) is written last, by rank 0, once every part is there. A rerun
of the same command skips the chunks whose part exists, so it ends with exactly the
output of an uninterrupted import. ``.import/import.json`` fingerprints the inputs
(paths, sizes, modification times) and the options that shape the output; a rerun
that differs is refused, never silently merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jevons.framework.data.importing.contract import Converted, Importer, Record, Skipped
from jevons.framework.data.importing.inputs import check_inputs, walk
from jevons.framework.data.media import MediaError
from jevons.framework.errors import DataError, UsageError

FORMAT = 1
"""Version of the import folder layout (``.import/import.json``)."""
EXAMPLES_PER_REASON = 10
"""How many skipped inputs ``import_report.json`` names per reason."""
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote (rank 0 knows the totals; other ranks return their own chunks' counts)."""

    out: Path
    records: int
    samples: dict[str, int]
    skipped: dict[str, int]
    chunks_done_before: int = 0
    """Chunks found finished by an earlier run of the same command (resumption)."""
    already_complete: bool = False


@dataclass
class _Task:
    chunk: int
    records: list[tuple[Record, str | None]]  # (record, split); a record with ``skip`` set has no split


@dataclass
class _Part:
    """One chunk's output, as its part file records it."""

    chunk: int
    records: int = 0
    size: int = 0
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    lengths: dict[str, list[list[int]]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, source, detail)
    stats: dict[str, Any] = field(default_factory=dict)


def run_import(importer: Importer[Any], inputs: Sequence[str], rank: int = 0, world_size: int = 1) -> ImportResult:
    """Import ``inputs`` into ``importer.options.out`` as this rank of ``world_size`` (see the module docstring)."""
    options = importer.options
    paths = check_inputs(inputs)
    out = Path(options.out).expanduser().resolve()
    inside = next((path for path in paths if path.is_dir() and out.is_relative_to(path)), None)
    if inside is not None:
        raise UsageError(f"out={out} is inside the input folder {inside}: the import would read its own output.")
    importer.preflight(paths)  # before the claim: a hopeless import leaves no folder behind
    state = out / ".import"
    settings = _settings(importer, paths)
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if rank == 0:
        finished = _claim(out, settings, fingerprint)
    else:
        finished = _await_claim(out, fingerprint)
    if finished:
        return _finished_result(out)
    ranks = _Ranks(state, rank, world_size)
    with ranks.running():
        return _import(importer, paths, out, ranks)


def _import(importer: Importer[Any], paths: list[Path], out: Path, ranks: _Ranks) -> ImportResult:
    options, state, rank, world_size = importer.options, out / ".import", ranks.rank, ranks.world_size
    if rank == 0:
        if not (state / "prepared").exists():
            importer.prepare(out, lambda: importer.records(paths), options.progress)
            write_atomic(state / "prepared", "")
    else:
        ranks.wait([state / "prepared"], "rank 0 to prepare the import (e.g. train the tokenizer)")

    workers = options.workers if options.workers is not None else default_workers()
    progress = _Progress(importer, paths, enabled=options.progress and rank == 0)
    runner = _Runner(importer, out, workers, progress)
    seen: set[bytes] = set()
    chunk: list[Record] = []
    chunks = 0
    done_before = 0
    try:
        for record in importer.records(paths):
            chunk.append(record)
            if len(chunk) == options.records_per_shard:
                done_before += _dispatch(chunks, chunk, seen, importer, runner, state, rank, world_size)
                chunks, chunk = chunks + 1, []
        if chunk:
            done_before += _dispatch(chunks, chunk, seen, importer, runner, state, rank, world_size)
            chunks += 1
        runner.finish()
    finally:
        runner.close()
        progress.close()
    del seen
    ranks.finished(chunks)
    if rank != 0:
        return _own_result(out, state, chunks, rank, world_size, done_before)
    ranks.check_all_finished(chunks)
    ranks.wait([state / "parts" / f"{k:06d}.json" for k in range(chunks)], "every shard's part file")
    return _merge(importer, out, paths, chunks, done_before)


def default_workers() -> int:
    """Worker processes per rank: the cores this process may use (Slurm's allocation, a cgroup's mask)
    shared by the ranks on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class _Ranks:
    """How the ranks of one launch meet through the folder, under ``.import/ranks/<launch>/``: each writes
    ``K.started``, ``K.done`` (the chunk count it saw) or ``K.failed`` (its error); rank 0 waits for every
    ``done`` and compares counts. A lock per rank refuses a second import into the same folder."""

    def __init__(self, state: Path, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        launch = "-".join(os.environ.get(v, "") for v in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "MASTER_PORT"))
        self.folder = state / "ranks" / (launch.strip("-") or "local") / f"of-{world_size}"

    @contextmanager
    def running(self) -> Iterator[None]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parents[1] / f"rank-{self.rank}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"Another import into {self.folder.parents[2]} is running (rank {self.rank} holds its lock): "
                    f"wait for it, or stop it first."
                ) from None
            for stale in (f"{self.rank}.done", f"{self.rank}.failed"):  # a launch id reused by hand
                (self.folder / stale).unlink(missing_ok=True)
            write_atomic(self.folder / f"{self.rank}.started", "")
            try:
                yield
            except BaseException as error:
                write_atomic(self.folder / f"{self.rank}.failed", f"{type(error).__name__}: {error}")
                raise

    def finished(self, chunks: int) -> None:
        write_atomic(self.folder / f"{self.rank}.done", str(chunks))

    def wait(self, paths: Sequence[Path], what: str, timeout: float = 24 * 3600.0) -> None:
        """Wait until every path exists; stop at once if a rank of this launch failed."""
        _wait_for(paths, what, timeout, failed_in=self.folder)

    def check_all_finished(self, chunks: int) -> None:
        """Rank 0: every rank started (within 10 minutes) and finished, each having seen ``chunks`` chunks."""
        if self.world_size == 1:
            return
        others = range(1, self.world_size)
        self.wait(
            [self.folder / f"{k}.started" for k in others],
            f"all {self.world_size} ranks to start (a single process that Slurm's variables make rank 0 of "
            f"{self.world_size}? run it under srun, or with launcher.nproc)",
            timeout=600.0,
        )
        self.wait([self.folder / f"{k}.done" for k in others], "the other ranks' shards")
        for k in others:
            seen = int((self.folder / f"{k}.done").read_text())
            if seen != chunks:
                raise DataError(
                    f"Rank {k} saw {seen} chunks of inputs, rank 0 saw {chunks}: the ranks read different inputs "
                    f"(a file changed during the import, or the ranks see different files). Nothing was indexed."
                )


def _dispatch(
    number: int,
    records: list[Record],
    seen: set[bytes],
    importer: Importer[Any],
    runner: _Runner,
    state: Path,
    rank: int,
    world_size: int,
) -> int:
    """Decide duplicates and splits for one chunk (every rank alike); convert it if this rank owns it
    and no earlier run finished it. Returns 1 if it was finished before, else 0."""
    options = importer.options
    decided: list[tuple[Record, str | None]] = []
    for given in records:
        record, identity = given, given.identity
        if record.skip is None and identity is not None:
            if identity in seen:
                record = dataclasses.replace(
                    record, skip=Skipped("duplicate", "the same content as an earlier input"), payload=None
                )
            else:
                seen.add(identity)
        if record.skip is not None:
            if options.strict:
                raise DataError(_strict_message(record.source, record.skip))
            decided.append((dataclasses.replace(record, payload=None), None))
        else:
            decided.append((record, _split_of(record, options.val_files, options.val_fraction)))
    if number % world_size != rank:
        return 0
    if _part_intact(state.parent, number):
        runner.progress.advance(len(records), sum(r.size for r in records))
        return 1
    runner.submit(_Task(number, decided))
    return 0


def _part_intact(out: Path, number: int) -> bool:
    """Whether chunk ``number`` was finished by an earlier run: its part file and shards of the sizes it lists.
    A part whose shards differ (a machine crash before the disk caught up) is removed, so the chunk is redone."""
    path = out / ".import" / "parts" / f"{number:06d}.json"
    if not path.exists():
        return False
    try:
        shards = json.loads(path.read_text())["shards"].values()
        if all((out / shard["url"]).stat().st_size == shard["filesize"] for shard in shards):
            return True
    except (OSError, ValueError, KeyError):
        pass
    path.unlink(missing_ok=True)
    return False


def _split_of(record: Record, val_roots: list[str], val_fraction: float) -> str:
    if record.split is not None:
        return record.split
    if val_roots:
        source = record.source
        held_out = any(source == root or source.startswith((root + ":", root + os.sep)) for root in val_roots)
        return "val" if held_out else "train"
    identity = record.identity if record.identity is not None else record.key.encode()  # no content hash: the key
    position = int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "big") / 2**64
    return "val" if position < val_fraction else "train"


def _strict_message(source: str, skip: MediaError) -> str:
    return (
        f"{source}: {skip.reason} ({skip.detail}). strict=true stops at the first bad input; "
        f"without it, bad inputs are skipped and counted in import_report.json."
    )


class _Runner:
    """Converts chunks in worker processes (or in this one with ``workers=0``), a bounded number at a time."""

    def __init__(self, importer: Importer[Any], out: Path, workers: int, progress: _Progress) -> None:
        self.importer = importer
        self.progress = progress
        self.records = 0
        self.bad = 0  # skipped inputs other than duplicates: what max_skipped_fraction bounds
        self.pending: set[Future[_Part]] = set()
        self.pool: ProcessPoolExecutor | None = None
        self.workers = workers
        if workers > 0:
            import multiprocessing

            # spawn: the main process may run threads (tokenizers' BPE trainer); forking them can deadlock.
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(importer, out),
            )
        else:
            _start_worker(importer, out)

    def submit(self, task: _Task) -> None:
        if self.pool is None:
            self._done(convert_chunk(task))
            return
        while len(self.pending) >= 2 * self.workers:  # bounded memory: at most two chunks per worker in flight
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)
        self.pending.add(self.pool.submit(convert_chunk, task))

    def finish(self) -> None:
        while self.pending:
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)

    def _collect(self, futures: set[Future[_Part]]) -> None:
        from concurrent.futures.process import BrokenProcessPool

        for future in futures:
            self.pending.discard(future)
            try:
                part = future.result()  # a worker's DataError (strict) is raised here, naming the input
            except BrokenProcessPool:
                raise DataError(
                    f"A worker process of the import died (killed for memory?) while converting one of "
                    f"{len(self.pending) + 1} chunks in flight; rerun the same command with fewer workers= "
                    f"(finished shards are kept)."
                ) from None
            self._done(part)

    def _done(self, part: _Part) -> None:
        self.progress.advance(part.records, part.size, len(part.skipped))
        self.records += part.records
        self.bad += sum(reason != "duplicate" for reason, _, _ in part.skipped)
        limit = self.importer.options.max_skipped_fraction
        if self.records >= 2 * self.importer.options.records_per_shard and self.bad > limit * self.records:
            raise DataError(
                f"{self.bad} of the first {self.records} inputs this rank read were bad, more than "
                f"max_skipped_fraction={limit}: stopped early; see the part files in .import/parts/ for which. "
                f"Fix the inputs, or rerun with a higher max_skipped_fraction (finished shards are kept)."
            )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}
"""This worker process' importer and output folder, set once by ``_start_worker``."""


def _start_worker(importer: Importer[Any], out: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: the workers are the parallelism
    importer.start_worker(out)
    _WORKER.update(importer=importer, out=out)


def convert_chunk(task: _Task) -> _Part:
    """Convert one chunk into its shards and part file (in a worker process)."""
    import webdataset as wds

    importer: Importer[Any] = _WORKER["importer"]  # _start_worker ran first
    out: Path = _WORKER["out"]
    part = _Part(task.chunk)
    temporary = {split: out / f".{split}-{task.chunk:06d}.tar.tmp-{os.getpid()}" for split in SPLITS}
    for stale in out.glob(f".*-{task.chunk:06d}.tar.tmp-*"):  # left by a killed run of this chunk
        stale.unlink(missing_ok=True)
    files: dict[str, Any] = {}
    writers: dict[str, Any] = {}
    try:
        for ordinal, (record, split) in enumerate(task.records):
            part.records += 1
            part.size += record.size
            skip: MediaError | None = record.skip
            samples: list[Converted] = []
            if skip is None:
                try:
                    samples = importer.convert(record)
                except MediaError as skipped:  # Skipped, or a decoder's MediaError let through
                    skip = skipped
            if skip is not None or split is None:
                assert skip is not None
                if importer.options.strict:
                    raise DataError(_strict_message(record.source, skip))
                part.skipped.append((skip.reason, record.source, skip.detail))
                continue
            if split not in writers:
                files[split] = open(temporary[split], "wb")
                writers[split] = wds.TarWriter(files[split], mtime=0.0)  # mtime 0: a rerun writes the same bytes
            key = _sample_key(task.chunk, ordinal, record.key)
            for sample in samples:
                writers[split].write({"__key__": key + sample.suffix, **sample.fields})
                part.lengths[split].append([int(n) for n in sample.lengths])
                importer.observe(sample, part.stats)
        for split, writer in writers.items():
            writer.close()
            files[split].flush()
            os.fsync(files[split].fileno())
            files[split].close()
            final = out / f"{split}-{task.chunk:06d}.tar"
            os.replace(temporary[split], final)
            count = len(part.lengths[split])
            part.shards[split] = {"url": final.name, "nsamples": count, "filesize": final.stat().st_size}
    finally:
        for handle in files.values():
            handle.close()
        for path in temporary.values():
            path.unlink(missing_ok=True)
    write_atomic(out / ".import" / "parts" / f"{task.chunk:06d}.json", json.dumps(dataclasses.asdict(part)))
    return part


def _sample_key(chunk: int, ordinal: int, name: str) -> str:
    """A webdataset key (no dots or slashes) that is unique in the import: the record's place, then its name."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[-60:]
    return f"{chunk:06d}{ordinal:05d}_{readable}"


def _merge(importer: Importer[Any], out: Path, paths: list[Path], chunks: int, done_before: int) -> ImportResult:
    """Rank 0, once every part is there: the report, ``meta.json``, then the index, last."""
    from jevons.framework.data.shards import write_index

    options = importer.options
    shards: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    lengths: dict[str, list[list[int]]] = {split: [] for split in SPLITS}
    skipped: Counter[str] = Counter()
    examples: dict[str, list[dict[str, str]]] = {}
    stats: list[dict[str, Any]] = []
    records = 0
    for number in range(chunks):
        part = json.loads((out / ".import" / "parts" / f"{number:06d}.json").read_text())
        records += part["records"]
        for split in SPLITS:
            if split in part["shards"]:
                shards[split].append(part["shards"][split])
                lengths[split] += part["lengths"][split]
        for reason, source, detail in part["skipped"]:
            skipped[reason] += 1
            if len(examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
                examples[reason].append({"source": source, "detail": detail})
        stats.append(part["stats"])
    samples = {split: len(lengths[split]) for split in SPLITS}
    report = {
        "kind": importer.kind,
        "family": importer.family,
        "inputs": [str(p) for p in paths],
        "records": records,
        "samples": samples,
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "first_skipped": examples,
    }
    write_atomic(out / "import_report.json", json.dumps(report, indent=2))
    bad = sum(n for reason, n in skipped.items() if reason != "duplicate")
    if records and bad > options.max_skipped_fraction * records:
        counts = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common() if reason != "duplicate")
        raise DataError(
            f"{bad} of {records} inputs were bad ({counts}), more than "
            f"max_skipped_fraction={options.max_skipped_fraction}; no index was written. "
            f"See {out / 'import_report.json'} for the first of each; fix them or raise max_skipped_fraction."
        )
    if records == 0:
        raise DataError(
            f"Found no {importer.kind} inputs in {', '.join(map(str, paths))}: docs/data.md lists what each kind reads."
        )
    if samples["train"] == 0:
        raise DataError(f"No training samples in {out}: every input was skipped or held out; see import_report.json.")
    meta = {
        "kind": importer.kind,
        "family": importer.family,
        "length_names": list(importer.length_names),
        "samples": samples,
        **importer.describe(out, stats),
    }
    write_atomic(out / "meta.json", json.dumps(meta, indent=2))
    for split in ("val", "train"):  # train.json last: its presence means the folder is whole
        write_index(out, split, shards[split], lengths[split], importer.length_names, name=f"{out.name}/{split}")
    claim = json.loads((out / ".import" / "import.json").read_text())
    write_atomic(out / ".import" / "import.json", json.dumps({**claim, "complete": True}, indent=2))
    if samples["val"] == 0:
        print(
            f"jevons: warning: the import has no validation samples; raise val_fraction or name val_files "
            f"(training with validation on {out} will fail).",
            file=sys.stderr,
        )
    return ImportResult(out, records, samples, dict(skipped), done_before)


def _settings(importer: Importer[Any], paths: list[Path]) -> dict[str, Any]:
    """What the output depends on: the kind, its version, the inputs as found on disk, the shaping options
    (files an option names, such as a tokenizer, described like inputs)."""
    options = importer.options
    shaping = {key: value for key, value in dataclasses.asdict(options).items() if key not in options.UNCHANGING}
    named_files = []
    for key in options.PATH_OPTIONS:
        value = getattr(options, key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and Path(item).expanduser().exists():
                named_files.append({"option": key, **_describe_input(Path(item).expanduser().resolve())})
    return {
        "format": FORMAT,
        "kind": importer.kind,
        "family": importer.family,
        "importer_version": importer.version,
        "inputs": [_describe_input(path) for path in paths],
        "options": shaping,
        "option_files": named_files,
    }


def _describe_input(path: Path) -> dict[str, Any]:
    """A file's size and modification time; for a folder, a hash of every file's relative path, size and
    modification time, so a rename, an added file or a same-size edit is seen."""
    if not path.is_dir():
        stat = _stat(path)
        return {"path": str(path), "bytes": stat[0], "mtime_ns": stat[1]}
    digest = hashlib.sha256()
    files = 0
    for file in walk([path]):
        size, mtime = _stat(file)
        digest.update(f"{file.relative_to(path)}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        files += 1
    return {"path": str(path), "files": files, "listing_sha256": digest.hexdigest()}


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:  # a dangling link: its record is skipped and counted; here it only has to be stable
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _claim(out: Path, settings: dict[str, Any], fingerprint: str) -> bool:
    """Rank 0: start (or resume) an import into ``out``; refuse a folder holding something else.
    Returns whether the same import already finished there."""
    claim_path = out / ".import" / "import.json"
    if claim_path.exists():
        claim = json.loads(claim_path.read_text())
        if claim["fingerprint"] != fingerprint:
            raise UsageError(
                f"out={out} holds an import of different inputs or options ({_differences(claim['settings'], settings)}). "
                f"Import into a new folder, or delete {out} to redo it."
            )
        return bool(claim.get("complete"))
    check_out_folder(out)
    write_atomic(claim_path, json.dumps({"fingerprint": fingerprint, "settings": settings, "complete": False}))
    return False


def check_out_folder(out: Path) -> None:
    """Refuse an ``out`` that holds anything but an import (``.import/`` may hold a Slurm job's script)."""
    if (out / ".import" / "import.json").exists() or not out.exists():
        return
    if any(entry.name != ".import" for entry in out.iterdir()):
        raise UsageError(f"out={out} exists and is not a Jevons import: import into a new or empty folder.")


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    changed = []
    for key in sorted(set(before) | set(now)):
        if key == "options":
            for option in sorted(set(before[key]) | set(now[key])):
                if before[key].get(option) != now[key].get(option):
                    changed.append(f"{option}: {before[key].get(option)!r} then, {now[key].get(option)!r} now")
        elif before.get(key) != now.get(key):
            changed.append(
                f"{key} changed" if key == "inputs" else f"{key}: {before.get(key)!r} then, {now.get(key)!r} now"
            )
    return "; ".join(changed) or "the fingerprint differs"


def _await_claim(out: Path, fingerprint: str) -> bool:
    claim_path = out / ".import" / "import.json"
    _wait_for([claim_path], "rank 0 to start the import", timeout=600.0)
    claim = json.loads(claim_path.read_text())
    if claim["fingerprint"] != fingerprint:
        raise UsageError(f"This rank sees different inputs or options than rank 0 for out={out}.")
    return bool(claim.get("complete"))


def _finished_result(out: Path) -> ImportResult:
    report = json.loads((out / "import_report.json").read_text())
    return ImportResult(out, report["records"], report["samples"], report["skipped"], already_complete=True)


def _own_result(out: Path, state: Path, chunks: int, rank: int, world_size: int, done_before: int) -> ImportResult:
    samples = dict.fromkeys(SPLITS, 0)
    skipped: Counter[str] = Counter()
    records = 0
    for number in range(rank, chunks, world_size):
        part = json.loads((state / "parts" / f"{number:06d}.json").read_text())
        records += part["records"]
        for split in SPLITS:
            samples[split] += len(part["lengths"][split])
        skipped.update(reason for reason, _, _ in part["skipped"])
    return ImportResult(out, records, samples, dict(skipped), done_before)


def write_atomic(path: Path, data: str | bytes) -> None:
    """``data`` into ``path`` under a temporary name, flushed to disk, then renamed: a crash (even of the
    machine) leaves the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _wait_for(paths: Sequence[Path], what: str, timeout: float, failed_in: Path | None = None) -> None:
    """Wait until every path exists (the ranks meet through the folder); stop at once when a rank has left
    a ``*.failed`` marker in ``failed_in``."""
    deadline = time.monotonic() + timeout
    remaining = list(paths)
    while remaining:
        remaining = [path for path in remaining if not path.exists()]
        failed = sorted(failed_in.glob("*.failed")) if failed_in is not None else []
        if failed:
            raise DataError(f"Rank {failed[0].stem} of the import failed: {failed[0].read_text()}")
        if remaining and time.monotonic() > deadline:
            raise DataError(f"Gave up waiting for {what}: {remaining[0]} did not appear in {timeout:.0f} s.")
        if remaining:
            time.sleep(0.2)


class _Progress:
    """A progress bar over the input bytes (so it has an ETA), with files/s and skips."""

    def __init__(self, importer: Importer[Any], paths: list[Path], enabled: bool) -> None:
        self.bar: Any = None
        self.files = 0
        self.skipped = 0
        self.start = time.monotonic()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=importer.input_bytes(paths),
                unit="B",
                unit_scale=True,
                desc=f"import {importer.kind}",
                file=sys.stderr,
                mininterval=1.0,
            )

    def advance(self, files: int, size: int, skipped: int = 0) -> None:
        self.files += files
        self.skipped += skipped
        if self.bar is not None:
            rate = self.files / max(1e-9, time.monotonic() - self.start)
            self.bar.set_postfix_str(f"{self.files} files, {rate:.1f} files/s, {self.skipped} skipped", refresh=False)
            self.bar.update(size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
