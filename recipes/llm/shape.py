"""The transformer shape the llm and mixed_modal families share: their ``model`` keys and the model's sizes.

:class:`TransformerShapeConfig` is the config users type (``model.hidden_size=256``);
each family's model section extends it. :meth:`TransformerShapeConfig.resolve`
turns it into the :class:`TransformerShape` a model is built from, every size
known: the vocabulary (padded for tensor parallelism) and the feed-forward
width (:func:`swiglu_width` unless given). :func:`check_heads` is the
config-time check of how attention heads and feed-forward units split.

This module stays light (no torch at import): the families' config classes are
imported while plugins load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Protocol

from jevons.framework.errors import UsageError


def swiglu_width(hidden_size: int, multiple: int = 32) -> int:
    """SwiGLU's feed-forward width: 8/3 x ``hidden_size`` (a 4x MLP's parameters in three matrices),
    rounded up to a multiple of ``multiple`` (Llama's sizing)."""
    return multiple * math.ceil(8 * hidden_size / 3 / multiple)


@dataclass
class TransformerShapeConfig:
    """A pre-norm decoder's sizes: the ``model`` keys the llm and mixed_modal families share."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_size: int | None = None
    """Null gives SwiGLU's 8/3 x hidden_size, rounded up to a multiple of 32 (Llama's sizing)."""
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    """Share the token embedding with the output head (GPT-2 style)."""

    def resolve(self, vocab_size: int) -> TransformerShape:
        """The shape to build a model with: ``vocab_size`` (already padded for TP) and the FFN width filled in."""
        sizes = {f.name: getattr(self, f.name) for f in fields(TransformerShapeConfig)}
        sizes["ffn_hidden_size"] = self.ffn_hidden_size or swiglu_width(self.hidden_size)
        return TransformerShape(vocab_size=vocab_size, **sizes)


@dataclass(kw_only=True)
class TransformerShape(TransformerShapeConfig):
    """Every size of a decoder, resolved: what the model classes take (keyword arguments only)."""

    vocab_size: int
    """Padded so it splits evenly over tensor-parallel ranks."""
    ffn_hidden_size: int = field()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class HeadSizes(Protocol):
    """What :func:`check_heads` reads of a ``model`` section."""

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_heads(self) -> int: ...

    @property
    def ffn_hidden_size(self) -> int | None: ...


def check_heads(model: HeadSizes, tensor: int = 1) -> None:
    """Refuse a ``model`` section whose width does not split into its heads, or whose heads and
    feed-forward units do not split over ``tensor`` ranks (``parallel.tensor``)."""
    if model.hidden_size % model.num_heads:
        raise UsageError(
            f"model.hidden_size={model.hidden_size} must be a multiple of model.num_heads={model.num_heads}."
        )
    if model.num_heads % tensor:
        divisors = [d for d in range(1, model.num_heads + 1) if model.num_heads % d == 0]
        raise UsageError(
            f"parallel.tensor={tensor} must divide model.num_heads={model.num_heads}: tensor parallelism splits whole "
            f"attention heads across ranks. Use a tensor size among {divisors}."
        )
    if model.ffn_hidden_size and model.ffn_hidden_size % tensor:
        raise UsageError(f"parallel.tensor={tensor} must divide model.ffn_hidden_size={model.ffn_hidden_size}.")
