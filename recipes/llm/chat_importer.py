"""``jevons data import chat``: conversations to the llm family's instruction examples, a loss mask on responses.

Inputs, files or folders (walked in sorted order), each optionally ``.gz`` or ``.zst``:
``.jsonl`` (one row per line), ``.json`` (an array of rows, or JSON lines) and
``.parquet`` (a record batch at a time). A row is one conversation, in either shape:

* ``messages_field``: a list of ``{"role", "content"}`` messages (OpenAI's and Hugging
  Face's chat format; other keys, such as ``reasoning_content``, reach the template);
* ``prompt_field`` and ``response_field``: a user and an assistant message, after a system
  message when ``system_field`` is a non-empty string.

``tokenizer=DIR`` (required) is the Hugging Face tokenizer folder of the model to be
fine-tuned; its ``tokenizer.json``, ``tokenizer_config.json`` and chat template (written as
``chat_template.jinja``, wherever it came from) are copied into the output, which so loads
with ``AutoTokenizer.from_pretrained``. Each conversation is rendered with the template
and tokenised (:mod:`jevons.recipes.llm.chat_template`); a record stores ``tokens.npy``
(``uint16`` when the vocabulary fits, else ``uint32``) and ``mask.npy`` (``uint8``, 1 for
the tokens of the assistant's responses and their end-of-turn token: what the model learns
to predict). ``meta.json`` says ``"chat": true``; :mod:`jevons.recipes.llm.sft_data` reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record, Skipped
from jevons.framework.data.importing.engine import write_atomic
from jevons.framework.data.importing.inputs import base_suffix, read_rows, walk
from jevons.framework.errors import UsageError
from jevons.recipes.llm.chat_template import (
    CONFIG_FILE,
    LEGACY_SPECIAL_TOKENS_FILE,
    TEMPLATE_FILE,
    ChatFields,
    ChatTemplate,
    conversation,
    read_chat_template,
    tokenize_conversation,
)
from jevons.recipes.llm.importer import ROW_SUFFIXES, _read_error, token_dtype

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class ChatImportOptions(ImportOptions):
    tokenizer: str | None = None
    """Required: the Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, its chat template)."""
    messages_field: str = "messages"
    """The field (jsonl, json) or column (parquet) holding a list of role/content messages."""
    prompt_field: str = "prompt"
    """With ``response_field``, the other shape of a row: one user message..."""
    response_field: str = "response"
    """...and the assistant's answer."""
    system_field: str = "system"
    """An optional system message of a prompt/response row."""
    max_tokens: int | None = None
    """Conversations of more tokens are skipped as too long; null keeps every length."""
    records_per_shard: int = 256
    """Conversations per shard: two workers share even a few thousand evenly."""

    PATH_OPTIONS: ClassVar[tuple[str, ...]] = (*ImportOptions.PATH_OPTIONS, "tokenizer")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer is None:
            raise UsageError(
                "jevons data import chat needs tokenizer=DIR: the Hugging Face tokenizer folder of the model you will "
                "fine-tune (tokenizer.json, tokenizer_config.json and its chat template), e.g. "
                "tokenizer=~/models/Qwen2-0.5B-Instruct. Its chat template decides the tokens."
            )
        for key in ("messages_field", "prompt_field", "response_field", "system_field"):
            require(bool(getattr(self, key)), key, getattr(self, key), "a field name")
        require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens, "1 or more, or null")

    @property
    def fields(self) -> ChatFields:
        return ChatFields(self.messages_field, self.prompt_field, self.response_field, self.system_field)


class ChatImporter(Importer[ChatImportOptions]):
    """Conversations to instruction examples for the ``llm`` family (see the module docstring)."""

    kind = "chat"
    family = "llm"
    description = "conversations (messages, or prompt/response) in jsonl/json/parquet, with the tokenizer's template"
    options_class: ClassVar[type[ImportOptions]] = ChatImportOptions
    length_names = ("tokens",)

    def __init__(self, options: ChatImportOptions) -> None:
        super().__init__(options)
        self._tokenizer: Any = None
        self._template: ChatTemplate | None = None
        self._dtype: Any = np.uint16

    def preflight(self, inputs: Sequence[Path]) -> None:
        import jinja2

        folder = tokenizer_folder(self.options.tokenizer)
        tokenizer = _load(folder / TOKENIZER_FILE)
        template = read_chat_template(folder, _has_token(tokenizer))
        skipped: Counter[str] = Counter()
        first: tuple[str, Skipped] | None = None
        for record in self.records(inputs):
            skip = record.skip
            if skip is None:
                try:  # the template may refuse what the rows hold (a system role it does not support)
                    tokenize_conversation(template, tokenizer, record.payload)
                    return  # one conversation the template renders: the import can go ahead
                except jinja2.TemplateError as error:
                    skip = Skipped("undecodable", f"the chat template refused it: {error}")
            skipped[skip.reason] += 1
            first = first or (record.source, skip)
        names = ", ".join(str(path) for path in inputs)
        if first is None:
            raise UsageError(f"Found no chat rows in {names}: give .jsonl, .json or .parquet files (docs/data.md).")
        counts = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        fields = self.options.fields
        raise UsageError(
            f"None of the {sum(skipped.values())} rows in {names} is a conversation with a response ({counts}; "
            f"first: {first[0]}: {first[1]}). Each row needs a '{fields.messages}' list of role/content "
            f"messages with an assistant message, or '{fields.prompt}' and '{fields.response}' fields; name other "
            f"fields with messages_field=, prompt_field=, response_field=. Nothing was written."
        )

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        for path in walk(inputs):
            if base_suffix(path) in ROW_SUFFIXES:
                yield from self._row_records(path)
            else:
                expected = "one of .jsonl, .json, .parquet (optionally .gz or .zst)"
                yield Record(
                    path.stem, str(path), skip=Skipped("undecodable", f"not a chat input: expected {expected}")
                )

    def _row_records(self, path: Path) -> Iterator[Record]:
        fields = self.options.fields
        columns = [fields.messages, fields.prompt, fields.response, fields.system]
        number, read = 0, 0
        try:
            for number, row, position in read_rows(path, columns=columns):
                size, read = position - read, position
                source, key = f"{path}:{number}", f"{path.stem}-{number}"
                if isinstance(row, Exception):
                    yield Record(key, source, size=size, skip=Skipped("undecodable", str(row)))
                    continue
                try:
                    messages = conversation(row, fields)
                    encoded = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
                except Skipped as skipped:
                    yield Record(key, source, size=size, skip=skipped)
                    continue
                except UnicodeEncodeError as error:  # a lone surrogate ("\\ud83d" in JSON): no tokenizer takes it
                    not_unicode = Skipped("undecodable", f"not valid Unicode: {error.reason}")
                    yield Record(key, source, size=size, skip=not_unicode)
                    continue
                digest = hashlib.blake2b(encoded, digest_size=16).digest()
                yield Record(key, source, payload=messages, identity=digest, size=size)
        except EOFError as error:  # a cut gzip/zstd stream: the rows before it are kept
            yield Record(f"{path.stem}-{number + 1}", f"{path}:{number + 1}", skip=Skipped("truncated", str(error)))
        except Exception as error:
            if isinstance(error, UsageError):
                raise
            yield Record(f"{path.stem}-{number + 1}", f"{path}:{number + 1}", skip=_read_error(error))

    def prepare(self, out: Path, records: Callable[[], Iterator[Record]], progress: bool) -> None:
        if (out / TOKENIZER_FILE).exists():
            return
        folder = tokenizer_folder(self.options.tokenizer)
        template = read_chat_template(folder, _has_token(_load(folder / TOKENIZER_FILE)))
        write_atomic(out / TEMPLATE_FILE, template.text.encode("utf-8"))
        for name in (CONFIG_FILE, LEGACY_SPECIAL_TOKENS_FILE, TOKENIZER_FILE):  # tokenizer.json last: it says done
            if (folder / name).is_file():
                write_atomic(out / name, (folder / name).read_bytes())

    def start_worker(self, out: Path) -> None:
        self._tokenizer = _load(out / TOKENIZER_FILE)
        self._template = read_chat_template(out, _has_token(self._tokenizer))
        self._dtype = token_dtype(self._tokenizer.get_vocab_size())

    def convert(self, record: Record) -> list[Converted]:
        import jinja2

        assert self._template is not None, "start_worker runs first"
        try:
            ids, mask = tokenize_conversation(self._template, self._tokenizer, record.payload)
        except jinja2.TemplateError as error:  # the template's raise_exception, or a field it needs is missing
            raise Skipped("undecodable", f"the chat template refused it: {error}") from None
        if not any(mask):
            raise Skipped("no response", "the chat template rendered no text for the assistant's messages")
        if self.options.max_tokens is not None and len(ids) > self.options.max_tokens:
            raise Skipped("too long", f"{len(ids)} tokens, max_tokens={self.options.max_tokens}")
        tokens = np.asarray(ids, dtype=self._dtype)
        return [Converted({"tokens.npy": tokens, "mask.npy": np.asarray(mask, dtype=np.uint8)}, [len(tokens)])]

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        stats["examples"] = stats.get("examples", 0) + 1
        stats["tokens"] = stats.get("tokens", 0) + int(sample.lengths[0])
        stats["response_tokens"] = stats.get("response_tokens", 0) + int(sample.fields["mask.npy"].sum())

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = _load(out / TOKENIZER_FILE)
        vocab = tokenizer.get_vocab_size()
        source = read_chat_template(tokenizer_folder(self.options.tokenizer), _has_token(tokenizer)).source
        return {
            "chat": True,
            "tokenizer": TOKENIZER_FILE,
            "chat_template": TEMPLATE_FILE,
            "chat_template_source": source,
            "tokenizer_source": self.options.tokenizer,
            "vocab_size": vocab,
            "token_dtype": np.dtype(token_dtype(vocab)).name,
            "examples": sum(s.get("examples", 0) for s in chunk_stats),
            "tokens": sum(s.get("tokens", 0) for s in chunk_stats),
            "response_tokens": sum(s.get("response_tokens", 0) for s in chunk_stats),
        }


def tokenizer_folder(tokenizer: str | None) -> Path:
    """The folder ``tokenizer=`` names (given as the folder or its tokenizer.json), checked to hold tokenizer.json."""
    assert tokenizer is not None, "ChatImportOptions requires it"
    path = Path(tokenizer).expanduser()
    folder = path.parent if path.name == TOKENIZER_FILE and path.is_file() else path
    if not (folder / TOKENIZER_FILE).is_file():
        found = "does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else "has none"
        raise UsageError(
            f"tokenizer={tokenizer}: no {TOKENIZER_FILE} there ({folder} {found}). Give the Hugging Face tokenizer "
            f"folder of the model to fine-tune: {TOKENIZER_FILE}, {CONFIG_FILE}, and its chat template "
            f"({TEMPLATE_FILE} or chat_template in {CONFIG_FILE})."
        )
    return folder


def _load(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file
        raise UsageError(f"{path} is not a Hugging Face tokenizer.json: {error}") from None


def _has_token(tokenizer: Any) -> Callable[[str], bool]:
    return lambda token: tokenizer.token_to_id(token) is not None
