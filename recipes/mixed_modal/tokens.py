"""One vocabulary for text and image tokens, and the early-fusion sequence layout.

Ids: five specials, then caption words, then image codes::

    <pad> <s> </s> <image> </image> | word_0 ... word_{W-1} | code_0 ... code_{K-1}

A sample is one sequence in either order, both trained on::

    caption -> image:  <s> w w w <image> c c ... c </image> </s>
    image -> caption:  <s> <image> c c ... c </image> w w w </s>

Every token has a modality: image codes are ``IMAGE``, everything else
(words and the specials that frame the image) is ``TEXT``. The model reads
the modalities from its forward context; generation uses the layout to know
which tokens may come next (exactly ``image_tokens`` codes after ``<image>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PAD, BOS, EOS, BOI, EOI = 0, 1, 2, 3, 4
SPECIALS = ("<pad>", "<s>", "</s>", "<image>", "</image>")
TEXT, IMAGE = 0, 1
MODALITIES = ("text", "image")
"""Modality names in id order: a modality id indexes this tuple."""


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]
    codebook_size: int
    image_tokens: int

    @property
    def first_code(self) -> int:
        return len(SPECIALS) + len(self.words)

    @property
    def size(self) -> int:
        return self.first_code + self.codebook_size

    def encode_caption(self, caption: str) -> list[int]:
        index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        unknown = [w for w in caption.split() if w not in index]
        if unknown:
            raise ValueError(f"caption words {unknown} are not in the vocabulary of {len(self.words)} words")
        return [index[w] for w in caption.split()]

    def decode_caption(self, ids: Sequence[int]) -> str:
        words = [self.words[i - len(SPECIALS)] for i in ids if len(SPECIALS) <= i < self.first_code]
        return " ".join(words).replace(" ,", ",")

    def sequence(self, caption_ids: Sequence[int], codes: np.ndarray, caption_first: bool) -> np.ndarray:
        """The token ids of one sample in the given order."""
        image = [BOI, *(int(c) + self.first_code for c in codes), EOI]
        body = [*caption_ids, *image] if caption_first else [*image, *caption_ids]
        return np.asarray([BOS, *body, EOS], dtype=np.int64)

    def modality(self, ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``IMAGE`` where an id is an image code, ``TEXT`` elsewhere (same shape and array type)."""
        return (ids >= self.first_code) * IMAGE
