"""Instruction data for the llm family: conversations with a loss on response tokens only, padded or packed.

A ``jevons data import chat`` folder (``meta.json`` says ``"chat": true``) holds
one example per record: the rendered conversation's ``tokens.npy`` and a
``mask.npy`` marking response tokens (:mod:`jevons.recipes.llm.chat_importer`).
An example of ``n`` tokens gives ``n - 1`` predictions; the loss counts target
``t`` only where ``mask[t]`` is set. Examples longer than ``data.seq_len + 1``
tokens are cut to it (counted in :attr:`ChatExamples.truncated`).

:class:`ChatExamples` is one example per row, right-padded to the batch's
longest. :class:`PackedExamples` (``data.packing=true``) packs whole examples
into rows of ``data.seq_len`` inputs, first-fit by decreasing length (Krell et
al., 2021, "Efficient Sequence Packing without Cross-contamination"), with
``segment_ids`` so attention stays within each example and ``position_ids``
restarting at 0 per example: each example's loss is what it would be alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jevons.framework.data.reader import Corrupt, ShardBackedDataset, ShardDataset, open_split
from jevons.framework.data.shards import decode_npy

PAD_SEGMENT = -1
"""The segment of padding after a packed row's last example."""


def _decode_example(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    tokens = decode_npy(sample["tokens.npy"]).astype(np.int64)
    mask = decode_npy(sample["mask.npy"]).astype(bool)
    return tokens, mask


class ChatExamples(ShardBackedDataset):
    """One conversation per item, ``(tokens, mask)``, cut to ``seq_len + 1`` tokens."""

    def __init__(self, examples: ShardDataset, seq_len: int) -> None:
        super().__init__(examples)
        self.seq_len = seq_len
        stored = examples.lengths[:, :1]
        self.lengths = np.minimum(stored, seq_len + 1)
        self.truncated = int((stored > seq_len + 1).sum())
        """Examples longer than a window, cut to it."""

    @classmethod
    def from_folder(cls, folder: Any, split: str, data_config: Any) -> ChatExamples | PackedExamples:
        examples = cls(open_split(folder, split, _decode_example, data_config), data_config.seq_len)
        return PackedExamples(examples) if data_config.packing else examples

    def __getitem__(self, i: int) -> Any:
        example = self.samples[i]
        if isinstance(example, Corrupt):
            return example
        tokens, mask = example
        return tokens[: self.seq_len + 1], mask[: self.seq_len + 1]

    @staticmethod
    def collate(samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """Right-padded ``input_ids``, ``targets`` and ``loss_mask`` ``(B, T)``, T the longest example's, and
        ``real_tokens``, the count of input positions that are not padding."""
        import torch

        longest = max(len(tokens) for tokens, _ in samples) - 1
        input_ids = torch.zeros((len(samples), longest), dtype=torch.long)
        targets = torch.zeros((len(samples), longest), dtype=torch.long)
        loss_mask = torch.zeros((len(samples), longest), dtype=torch.float32)
        for row, (tokens, mask) in enumerate(samples):
            n = len(tokens) - 1
            input_ids[row, :n] = torch.from_numpy(tokens[:-1])
            targets[row, :n] = torch.from_numpy(tokens[1:])
            loss_mask[row, :n] = torch.from_numpy(mask[1:].astype(np.float32))
        real = torch.tensor(sum(len(tokens) - 1 for tokens, _ in samples))
        return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "real_tokens": real}


def pack_first_fit(lengths: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Indices of items packed into bins of ``capacity`` (lengths ``<= capacity``), first fit by
    decreasing length; each bin's items in index order, bins in the order they were opened.

    The first bin with room is found in a max-tree over every bin's free room (bins not yet
    opened have all of it), so packing ``n`` items takes ``O(n log n)``, not a scan of the bins
    per item: a million examples pack in seconds.
    """
    order = np.argsort(-lengths, kind="stable")
    leaves = 1
    while leaves < len(order):
        leaves *= 2
    room = [capacity] * (2 * leaves)  # room[node]: the most free room of any bin under it; leaves from `leaves`
    bins: list[list[int]] = []
    for index in order.tolist():
        size = int(lengths[index])
        node = 1
        while node < leaves:  # down to the leftmost bin with room
            node = 2 * node if room[2 * node] >= size else 2 * node + 1
        number = node - leaves
        if number == len(bins):
            bins.append([])
        bins[number].append(index)
        room[node] -= size
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
    return [np.sort(np.asarray(b, dtype=np.int64)) for b in bins]


class PackedExamples(ShardBackedDataset):
    """Rows of whole examples, at most ``seq_len`` inputs each; an item is the list of its examples.

    ``lengths`` are the rows' input counts (plus one, as windows count tokens), so the
    padding-aware sampler and the run summary see rows, not examples.
    """

    def __init__(self, examples: ChatExamples) -> None:
        super().__init__(examples.samples)
        self.examples = examples
        inputs = examples.lengths[:, 0] - 1  # predictions per example
        self.rows = pack_first_fit(inputs, examples.seq_len)
        self.lengths = np.asarray([[int(inputs[row].sum()) + 1] for row in self.rows], dtype=np.int64).reshape(-1, 1)

    @property
    def truncated(self) -> int:
        return self.examples.truncated

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        members = [self.examples[int(j)] for j in self.rows[i]]
        corrupt = next((m for m in members if isinstance(m, Corrupt)), None)
        return corrupt if corrupt is not None else members

    @staticmethod
    def collate(rows: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, Any]:
        """``input_ids``, ``targets``, ``loss_mask``, ``position_ids`` and ``segment_ids`` ``(B, T)``, and
        ``real_tokens``."""
        import torch

        longest = max(sum(len(tokens) - 1 for tokens, _ in row) for row in rows)
        shape = (len(rows), longest)
        batch = {
            "input_ids": torch.zeros(shape, dtype=torch.long),
            "targets": torch.zeros(shape, dtype=torch.long),
            "loss_mask": torch.zeros(shape, dtype=torch.float32),
            "position_ids": torch.zeros(shape, dtype=torch.long),
            "segment_ids": torch.full(shape, PAD_SEGMENT, dtype=torch.long),
        }
        for r, row in enumerate(rows):
            start = 0
            for segment, (tokens, mask) in enumerate(row):
                n = len(tokens) - 1
                span = slice(start, start + n)
                batch["input_ids"][r, span] = torch.from_numpy(tokens[:-1])
                batch["targets"][r, span] = torch.from_numpy(tokens[1:])
                batch["loss_mask"][r, span] = torch.from_numpy(mask[1:].astype(np.float32))
                batch["position_ids"][r, span] = torch.arange(n)
                batch["segment_ids"][r, span] = segment
                start += n
        batch["real_tokens"] = (batch["segment_ids"] != PAD_SEGMENT).sum()
        return batch
