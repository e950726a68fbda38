"""The llm family's data: a BPE-tokenised prose corpus in indexed shards, read as fixed-length windows.

``llm-prose`` is CPython's own prose, read from this interpreter's standard
library with no download: the documentation topics (``pydoc_data.topics``,
465 KB) and the docstrings of every standard-library module (1.7 MB, read
with ``ast`` from the sources, so nothing is imported). Each topic and each
module is one document; every tenth (sorted by name) is held out for
validation; a byte-level BPE tokenizer (Hugging Face ``tokenizers``) is
trained on the training documents only. Version 1 held the topics alone, and
the tiny recipe went over them five times in 500 steps, so validation measured
memorisation more than learning. Documents are cut into windows of
``data.seq_len + 1`` tokens when read, so the sequence length is a config
choice, not baked into the shards.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.data.reader import Corrupt, ShardBackedDataset, ShardDataset, open_split
from jevons.framework.data.shards import decode_npy, write_shards
from jevons.framework.errors import UsageError
from jevons.framework.family import DataSource

VOCAB_SIZE = 512
"""Small on purpose: the corpus is 465 KB, and the tiny recipe trains in 90 s on 2 cores."""
END_OF_TEXT = "<|endoftext|>"
PAD_ID = 0  # the end-of-text id; padded positions are masked out of the loss


EOD_CANDIDATES = (END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
"""End-of-document tokens looked for, in order, in a tokenizer (GPT-2, Llama 3, Llama 2/Mistral, Gemma, Qwen)."""


def end_of_document(tokenizer: Any, named: str | None = None) -> tuple[str, int]:
    """The tokenizer's end-of-document token and id: ``named``, else the first of :data:`EOD_CANDIDATES` it has."""
    candidates = (named,) if named else EOD_CANDIDATES
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, int(token_id)
    raise UsageError(
        f"The tokenizer has no end-of-document token ({', '.join(candidates)}): name one it has with eod_token=TOKEN."
    )


def load_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise UsageError(f"No tokenizer.json in {folder}: an llm data folder needs the tokenizer that made its tokens.")
    return Tokenizer.from_file(str(path))


def _documents() -> list[tuple[str, str]]:
    """``(name, text)`` for every documentation topic and every standard-library module with docstrings."""
    from pydoc_data import topics

    documents = [(f"topic/{name}", text) for name, text in topics.topics.items()]
    return sorted(documents + _stdlib_docstrings())


def _stdlib_docstrings() -> list[tuple[str, str]]:
    import ast
    import os
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    skip = {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib2to3",
        "ensurepip",
        "turtledemo",
    }
    documents = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in skip and not f.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            docstrings = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
            texts = [t for t in docstrings if t and len(t) > 40]
            if texts:
                documents.append((f"module/{os.path.relpath(path, root)}", "\n\n".join(texts)))
    return documents


def _split() -> dict[str, list[tuple[str, str]]]:
    documents = _documents()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for number, document in enumerate(documents):
        splits["val" if number % 10 == 0 else "train"].append(document)
    return splits


def build_prose(directory: Path, progress: bool) -> None:
    """Write ``tokenizer.json``, ``train``/``val`` shards and ``meta.json`` into ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tqdm import tqdm

    splits = _split()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text for _, text in splits["train"]], trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    assert eot == PAD_ID, "the end-of-text token must be id 0"

    counts: Counter[int] = Counter()
    bar = tqdm(total=sum(len(v) for v in splits.values()), desc="llm-prose", unit="document", disable=not progress)
    for split, documents in splits.items():

        def samples(
            split: str = split, documents: list[tuple[str, str]] = documents
        ) -> Iterator[tuple[dict[str, Any], list[int]]]:
            for name, text in documents:
                ids = [*tokenizer.encode(text).ids, eot]
                if split == "train":
                    counts.update(ids)
                bar.update()
                key = re.sub(r"[^A-Za-z0-9_-]", "_", name)  # webdataset keys: no dots or slashes
                yield {"__key__": key, "tokens.npy": np.asarray(ids, dtype=np.uint16), "txt": text}, [len(ids)]

        write_shards(
            samples(), directory, split, length_names=["tokens"], name=f"llm-prose/{split}", max_samples_per_shard=32
        )
    bar.close()
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    meta = {"vocab_size": tokenizer.get_vocab_size(), "train_tokens": total, "unigram_entropy_nats": entropy}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))


PROSE_SOURCE = DataSource(
    name="llm-prose",
    description="CPython's prose: documentation topics and standard-library docstrings, BPE-512 tokens",
    build=build_prose,
    version=2,
)


def _meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def is_chat(folder: Path) -> bool:
    """Whether ``folder`` is a ``jevons data import chat`` output (examples with response masks)."""
    return bool(_meta(folder).get("chat"))


def unigram_entropy(folder: Path) -> float | None:
    """Entropy (nats/token) of the training tokens' unigram distribution, if the folder records it."""
    return _meta(folder).get("unigram_entropy_nats")


def _decode_document(sample: dict[str, Any]) -> np.ndarray:
    return decode_npy(sample["tokens.npy"]).astype(np.int64)


class TokenWindows(ShardBackedDataset):
    """Map-style windows of ``seq_len + 1`` tokens over a split's documents (``samples``).

    Window ``i`` is ``(document, start)``; a document of ``n`` tokens yields
    windows starting at ``0, seq_len, 2 * seq_len, ...`` while at least two
    tokens remain, so every token is a prediction target exactly once.
    ``lengths`` holds each window's token count (the last one of a document
    may be short; batches pad it and mask the padding out of the loss).
    """

    def __init__(self, documents: ShardDataset, seq_len: int) -> None:
        super().__init__(documents)
        self.seq_len = seq_len
        windows = [
            (doc, start)
            for doc, length in enumerate(documents.lengths[:, 0])
            for start in range(0, int(length) - 1, seq_len)
        ]
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
        doc_lengths = documents.lengths[self.windows[:, 0], 0]
        self.lengths = np.minimum(seq_len + 1, doc_lengths - self.windows[:, 1])

    @classmethod
    def from_folder(cls, folder: Path, split: str, data_config: Any) -> TokenWindows | StreamWindows:
        """The split's windows: over one stream of all its documents for an import (``meta.json`` says
        ``token_stream``), else per document (the built-in corpus, whose benchmarks are per document)."""
        documents = open_split(folder, split, _decode_document, data_config)
        if _meta(folder).get("token_stream"):
            return StreamWindows(documents, data_config.seq_len)
        return cls(documents, data_config.seq_len)

    @property
    def documents(self) -> ShardDataset:
        """The split's documents, which the windows cut."""
        return self.samples

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Any:
        doc, start = self.windows[i]
        document = self.documents[int(doc)]
        if isinstance(document, Corrupt):
            return document  # every window of an unreadable document is lost with it
        return document[start : start + self.seq_len + 1]

    @staticmethod
    def collate(samples: list[np.ndarray]) -> dict[str, Any]:
        """Right-pad to the longest window: ``input_ids``, ``targets`` and ``loss_mask``, each ``(B, T)``."""
        import torch

        longest = max(len(s) for s in samples) - 1
        input_ids = torch.full((len(samples), longest), PAD_ID, dtype=torch.long)
        targets = torch.full((len(samples), longest), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.float32)
        for row, tokens in enumerate(samples):
            n = len(tokens) - 1
            input_ids[row, :n] = torch.from_numpy(tokens[:-1])
            targets[row, :n] = torch.from_numpy(tokens[1:])
            mask[row, :n] = 1.0
        return {"input_ids": input_ids, "targets": targets, "loss_mask": mask}


class StreamWindows(ShardBackedDataset):
    """Windows of ``seq_len + 1`` tokens over one stream: the split's documents end to end, each ending
    in its end-of-document token (Megatron's and LitGPT's packing; docs/data.md).

    Window ``i`` starts at token ``i * seq_len`` of the stream, so consecutive windows share one
    token and every token but the first is a target exactly once; only the last may be short.
    A window that touches an unreadable document is lost with it.
    """

    def __init__(self, documents: ShardDataset, seq_len: int) -> None:
        super().__init__(documents)
        self.seq_len = seq_len
        self.ends = np.cumsum(documents.lengths[:, 0])  # stream offset after each document
        total = int(self.ends[-1]) if len(self.ends) else 0
        starts = np.arange(0, max(0, total - 1), seq_len, dtype=np.int64)
        self.starts = starts  # one stream offset per window
        self.lengths = np.minimum(seq_len + 1, total - starts)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Any:
        start = int(self.starts[i])
        stop = start + int(self.lengths[i])
        first = int(np.searchsorted(self.ends, start, side="right"))
        pieces = []
        for doc in range(first, len(self.ends)):
            begin = int(self.ends[doc - 1]) if doc else 0
            if begin >= stop:
                break
            document = self.documents[doc]
            if isinstance(document, Corrupt):
                return document
            pieces.append(document[max(0, start - begin) : stop - begin])
        return np.concatenate(pieces)

    @property
    def documents(self) -> ShardDataset:
        """The split's documents, end to end in the stream."""
        return self.samples

    collate = staticmethod(TokenWindows.collate)
