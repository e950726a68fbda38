"""Transcripts: normalisation and the character vocabulary the speech family predicts.

Characters rather than subwords: with a few thousand short utterances a
subword vocabulary leaves most pieces rarely seen, and character error rate
is then read straight off the output. Id 0 is both the CTC blank and padding
(never a target of the attention decoder); ``<s>`` starts and ``</s>`` ends a
decoder sequence.
"""

from __future__ import annotations

import re
import string

BLANK, BOS, EOS = 0, 1, 2
SPECIALS = ("<blank>", "<s>", "</s>")
ALPHABET = " '" + string.ascii_lowercase
VOCAB = SPECIALS + tuple(ALPHABET)
_IDS = {c: i for i, c in enumerate(VOCAB)}


def normalize(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces; other punctuation becomes a space."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " "))
    return " ".join(text.split())


def encode(text: str) -> list[int]:
    """Character ids of a normalised transcript (no ``<s>`` or ``</s>``)."""
    try:
        return [_IDS[c] for c in text]
    except KeyError as error:
        raise ValueError(
            f"{text!r} has {error.args[0]!r}, which is not in the vocabulary: normalize() it first."
        ) from None


def decode(ids: list[int]) -> str:
    """Text of ids, stopping at ``</s>`` and skipping blanks and ``<s>``."""
    out = []
    for i in ids:
        if i == EOS:
            break
        if i > EOS:
            out.append(VOCAB[i])
    return "".join(out)
