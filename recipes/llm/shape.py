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


ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class RopeScaling:
    """How rotary frequencies are stretched for contexts beyond the pretraining length.

    ``default``: none. ``linear``: positions divided by ``factor`` (Chen et al., 2023,
    "Extending Context Window ... via Positional Interpolation"). ``llama3``: Meta's
    Llama 3.1 rule: wavelengths longer than ``original_max_position_embeddings / low_freq_factor``
    are divided by ``factor``, those shorter than ``.../ high_freq_factor`` kept, and those
    between interpolated smoothly (transformers' ``_compute_llama3_parameters``).
    """

    rope_type: str = "default"
    """One of default, linear, llama3."""
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    """The pretraining context (llama3 only)."""

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise UsageError(
                f"model.rope_scaling.rope_type={self.rope_type!r} is not supported: Jevons implements "
                f"{', '.join(ROPE_TYPES)}."
            )
        if self.rope_type == "llama3" and not self.original_max_position_embeddings:
            raise UsageError("model.rope_scaling.rope_type=llama3 needs original_max_position_embeddings.")

    @property
    def extends_context(self) -> bool:
        return self.rope_type != "default" and self.factor > 1.0


@dataclass
class TransformerShapeConfig:
    """A pre-norm decoder's sizes: the ``model`` keys the llm and mixed_modal families share."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (Ainslie et al., 2023, "GQA"); null is ``num_heads``."""
    head_dim: int | None = None
    """Null is ``hidden_size / num_heads``; some checkpoints (Qwen3, Gemma) set it apart."""
    ffn_hidden_size: int | None = None
    """Null gives SwiGLU's 8/3 x hidden_size, rounded up to a multiple of 32 (Llama's sizing)."""
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    """Share the token embedding with the output head (GPT-2 style)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections (Qwen2)."""

    def resolve(self, vocab_size: int) -> TransformerShape:
        """The shape to build a model with: ``vocab_size`` (already padded for TP) and the FFN width filled in."""
        sizes = {f.name: getattr(self, f.name) for f in fields(TransformerShapeConfig)}
        sizes["ffn_hidden_size"] = self.ffn_hidden_size or swiglu_width(self.hidden_size)
        sizes["num_kv_heads"] = self.num_kv_heads or self.num_heads
        sizes["head_dim"] = self.head_dim or self.hidden_size // self.num_heads
        return TransformerShape(vocab_size=vocab_size, **sizes)


@dataclass(kw_only=True)
class TransformerShape(TransformerShapeConfig):
    """Every size of a decoder, resolved: what the model classes take (keyword arguments only)."""

    vocab_size: int
    """Padded so it splits evenly over tensor-parallel ranks."""
    ffn_hidden_size: int = field()
    num_kv_heads: int = field()
    head_dim: int = field()

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads


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
    # Grouped-query keys are optional: the speech family's sections have only the three above.
    head_dim, kv_heads = getattr(model, "head_dim", None), getattr(model, "num_kv_heads", None) or model.num_heads
    if head_dim is None and model.hidden_size % model.num_heads:
        raise UsageError(
            f"model.hidden_size={model.hidden_size} must be a multiple of model.num_heads={model.num_heads}, "
            f"or model.head_dim set."
        )
    if model.num_heads % kv_heads:
        raise UsageError(
            f"model.num_kv_heads={kv_heads} must divide model.num_heads={model.num_heads}: each key/value head "
            f"serves a whole group of query heads."
        )
    if model.num_heads % tensor:
        divisors = [d for d in range(1, model.num_heads + 1) if model.num_heads % d == 0]
        raise UsageError(
            f"parallel.tensor={tensor} must divide model.num_heads={model.num_heads}: tensor parallelism splits whole "
            f"attention heads across ranks. Use a tensor size among {divisors}."
        )
    if kv_heads % tensor:
        divisors = [d for d in range(1, kv_heads + 1) if kv_heads % d == 0]
        raise UsageError(
            f"parallel.tensor={tensor} must divide model.num_kv_heads={kv_heads}: tensor parallelism splits whole "
            f"key/value heads (and their query groups) across ranks. Use a tensor size among {divisors}."
        )
    if model.ffn_hidden_size and model.ffn_hidden_size % tensor:
        raise UsageError(f"parallel.tensor={tensor} must divide model.ffn_hidden_size={model.ffn_hidden_size}.")
