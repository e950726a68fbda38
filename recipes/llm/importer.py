"""``jevons data import text``: a user's documents to the llm family's token shards.

Inputs, files or folders (walked in sorted order), each optionally ``.gz`` or ``.zst``:

* ``.txt`` / ``.md``: one file is one document (LitGPT's ``TextFiles``);
* ``.jsonl`` / ``.json``: one document per object, its ``text_field`` (Megatron's
  ``preprocess_data.py``); a ``.json`` file may also be one array of objects;
* ``.parquet``: the ``text_field`` column, read a record batch at a time.

The tokenizer is the user's (a Hugging Face ``tokenizer.json``, a file or the folder
holding it) or a byte-level BPE of ``vocab_size`` trained with ``tokenizers`` on the
whole input (duplicates left out) before any shard is written. Each document is stored
as its token ids plus the end-of-document token, as ``uint16`` when the vocabulary fits,
else ``uint32``; the llm family reads a split as one stream of its documents, cut into
``data.seq_len + 1``-token windows (docs/data.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record, Skipped
from jevons.framework.data.importing.inputs import base_suffix, open_binary, read_rows, walk
from jevons.framework.errors import UsageError
from jevons.recipes.llm.data import END_OF_TEXT, end_of_document

DEFAULT_VOCAB_SIZE = 16384
"""The BPE trained when no tokenizer is given: about GPT-2's subword granularity at a third of its
size, which a corpus of tens of MB fills (larger vocabularies leave most merges rare)."""
TEXT_SUFFIXES = (".txt", ".md")
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class TextImportOptions(ImportOptions):
    tokenizer: str | None = None
    """A Hugging Face ``tokenizer.json`` (or the folder holding it); null trains a BPE on the input."""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    """Size of the BPE trained when no ``tokenizer`` is given."""
    eod_token: str | None = None
    """The end-of-document token; null finds the first of <|endoftext|>, <|end_of_text|>, </s>, <eos>, <|im_end|>."""
    text_field: str = "text"
    """The field (jsonl, json) or column (parquet) holding a document."""
    min_tokens: int = 1
    """Documents with fewer tokens (end-of-document excluded) are skipped as too short."""
    max_tokens: int | None = None
    """Documents with more tokens are skipped as too long; null keeps every length."""
    records_per_shard: int = 256
    """Documents per shard (about 1 M tokens for source-code-sized documents): small enough that two
    workers share even a corpus of a few thousand documents evenly."""

    PATH_OPTIONS: ClassVar[tuple[str, ...]] = (*ImportOptions.PATH_OPTIONS, "tokenizer")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.vocab_size >= 260, "vocab_size", self.vocab_size, "at least 260 (256 bytes and a few merges)")
        require(self.min_tokens >= 0, "min_tokens", self.min_tokens, "0 or more")


class TextImporter(Importer[TextImportOptions]):
    """Documents to token shards for the ``llm`` family (see the module docstring)."""

    kind = "text"
    family = "llm"
    description = ".txt/.md files, jsonl/json objects or a parquet column (gzip or zstd), tokenised"
    options_class: ClassVar[type[ImportOptions]] = TextImportOptions
    length_names = ("tokens",)

    def __init__(self, options: TextImportOptions) -> None:
        super().__init__(options)
        self._tokenizer: Any = None
        self._eod = -1
        self._dtype: Any = np.uint16

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        for path in walk(inputs):
            suffix = base_suffix(path)
            if suffix in TEXT_SUFFIXES:
                yield self._file_record(path)
            elif suffix in ROW_SUFFIXES:
                yield from self._row_records(path)
            else:
                expected = "one of .txt, .md, .jsonl, .json, .parquet (optionally .gz or .zst)"
                yield Record(
                    path.stem, str(path), skip=Skipped("undecodable", f"not a text input: expected {expected}")
                )

    def _file_record(self, path: Path) -> Record:
        try:
            with open_binary(path) as handle:
                data = handle.read()
        except EOFError as error:
            return Record(path.stem, str(path), skip=Skipped("truncated", str(error)))
        except Exception as error:  # unreadable, a dangling link, a corrupt gzip/zstd stream: this file's skip
            return Record(path.stem, str(path), skip=Skipped("undecodable", f"{type(error).__name__}: {error}"))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            return Record(path.stem, str(path), size=len(data), skip=Skipped("undecodable", str(error)))
        return self._text_record(path.stem, str(path), text, len(data))

    def _row_records(self, path: Path) -> Iterator[Record]:
        field_name = self.options.text_field
        number, read = 0, 0
        try:
            for number, row, position in read_rows(path, columns=[field_name]):
                size, read = position - read, position
                source = f"{path}:{number}"
                key = f"{path.stem}-{number}"
                if isinstance(row, Exception):
                    yield Record(key, source, size=size, skip=Skipped("undecodable", str(row)))
                elif field_name not in row:
                    missing = Skipped("missing field", f"no '{field_name}' in {sorted(row)[:8]}")
                    yield Record(key, source, size=size, skip=missing)
                elif not isinstance(row[field_name], str):
                    found = type(row[field_name]).__name__
                    not_text = Skipped("undecodable", f"'{field_name}' is a {found}, not text")
                    yield Record(key, source, size=size, skip=not_text)
                else:
                    yield self._text_record(key, source, row[field_name], size)
        except EOFError as error:  # a cut gzip/zstd stream: the rows before it are kept
            yield Record(f"{path.stem}-{number + 1}", f"{path}:{number + 1}", skip=Skipped("truncated", str(error)))
        except Exception as error:
            if isinstance(error, UsageError):
                raise
            yield Record(f"{path.stem}-{number + 1}", f"{path}:{number + 1}", skip=_read_error(error))

    def _text_record(self, key: str, source: str, text: str, size: int) -> Record:
        if not text.strip():
            return Record(key, source, size=size, skip=Skipped("empty text", "only whitespace"))
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate ("\\ud83d" in JSON): no tokenizer takes it
            return Record(key, source, size=size, skip=Skipped("undecodable", f"not valid Unicode: {error.reason}"))
        digest = hashlib.blake2b(encoded, digest_size=16).digest()
        return Record(key, source, payload=text, identity=digest, size=size)

    def prepare(self, out: Path, records: Callable[[], Iterator[Record]], progress: bool) -> None:
        target = out / "tokenizer.json"
        if target.exists():
            return
        temporary = out / f".tokenizer.json.tmp-{os.getpid()}"
        if self.options.tokenizer is not None:
            source = Path(self.options.tokenizer).expanduser()
            source = source / "tokenizer.json" if source.is_dir() else source
            if not source.is_file():
                raise UsageError(
                    f"tokenizer={self.options.tokenizer}: no tokenizer.json there. Give a Hugging Face tokenizer.json "
                    f"(or its folder), or leave tokenizer unset to train a BPE of vocab_size on the input."
                )
            shutil.copyfile(source, temporary)
        else:
            _train_bpe(records, self.options.vocab_size, progress).save(str(temporary))
        _eod_id(_load(temporary), self.options.eod_token, str(self.options.tokenizer or "the trained BPE"))
        os.replace(temporary, target)

    def start_worker(self, out: Path) -> None:
        self._tokenizer = _load(out / "tokenizer.json")
        self._eod = _eod_id(self._tokenizer, self.options.eod_token, "tokenizer.json")
        self._dtype = token_dtype(self._tokenizer.get_vocab_size())

    def convert(self, record: Record) -> list[Converted]:
        ids = self._tokenizer.encode(record.payload).ids
        if len(ids) < self.options.min_tokens:
            raise Skipped("too short", f"{len(ids)} tokens, min_tokens={self.options.min_tokens}")
        if self.options.max_tokens is not None and len(ids) > self.options.max_tokens:
            raise Skipped("too long", f"{len(ids)} tokens, max_tokens={self.options.max_tokens}")
        tokens = np.asarray([*ids, self._eod], dtype=self._dtype)
        return [Converted({"tokens.npy": tokens}, [len(tokens)])]

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        stats["documents"] = stats.get("documents", 0) + 1
        stats["tokens"] = stats.get("tokens", 0) + int(sample.lengths[0])

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = _load(out / "tokenizer.json")
        vocab = tokenizer.get_vocab_size()
        return {
            "tokenizer": "tokenizer.json",
            "vocab_size": vocab,
            "eod_id": _eod_id(tokenizer, self.options.eod_token, "tokenizer.json"),
            "token_dtype": np.dtype(token_dtype(vocab)).name,
            "token_stream": True,
            "documents": sum(s.get("documents", 0) for s in chunk_stats),
            "tokens": sum(s.get("tokens", 0) for s in chunk_stats),
        }


def token_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _load(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file
        raise UsageError(f"{path} is not a Hugging Face tokenizer.json: {error}") from None


def _eod_id(tokenizer: Any, named: str | None, where: str) -> int:
    try:
        return end_of_document(tokenizer, named)[1]
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


def _train_bpe(records: Callable[[], Iterator[Record]], vocab_size: int, progress: bool) -> Any:
    """A byte-level BPE (GPT-2's pre-tokenisation) trained on every distinct, readable document, streamed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],  # id 0, as in the built-in corpus
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )

    def texts() -> Iterator[str]:
        seen: set[bytes] = set()
        for record in records():
            if record.skip is None and record.identity not in seen:
                assert record.identity is not None
                seen.add(record.identity)
                yield record.payload

    tokenizer.train_from_iterator(texts(), trainer)
    return tokenizer


def _read_error(error: Exception) -> Skipped:
    """A failure reading the rest of a file (a damaged parquet page, a bad zstd frame): one skip for the rest."""
    return Skipped("undecodable", f"{type(error).__name__}: {error}; the file's remaining rows were not read")
