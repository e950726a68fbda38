"""A decoder-only transformer (Llama-style) built from Megatron-Core's tensor-parallel layers.

Pre-norm blocks of RMSNorm, causal self-attention (grouped-query when the
shape has fewer key/value heads) with rotary position embeddings (Su et al.,
2021, "RoFormer") through ``scaled_dot_product_attention``,
and a SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer").
Attention heads and the feed-forward hidden units are split Megatron-style
(Shoeybi et al., 2019): column-parallel Q, K, V and gate/up projections,
row-parallel output projections, vocab-parallel embedding and output head.
At TP=1 the same layers run with no communication.

Tensors are batch-first: ``(B, T, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from jevons.framework.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    normal_init,
    scaled_init,
    tensor_parallel_rank,
    tensor_parallel_size,
)
from jevons.recipes.llm.shape import RopeScaling, TransformerShape  # the model's sizes; also imported from here

BlockT = TypeVar("BlockT", bound=nn.Module)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, 2019) with a learned gain."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary embeddings rotating pairs ``(i, i + head_dim/2)`` (Llama's and transformers' layout).

    The angles are computed from each token's position at every call (``T x head_dim/2``
    products, negligible beside attention), so positions may restart inside a packed
    sequence and no table tied to a maximum length is kept. Frequencies follow
    :class:`RopeScaling`.
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        # A plain attribute, not a buffer: fixed by the config, so a meta-device build needs no re-init.
        self.inv_freq = rope_frequencies(head_dim, theta, scaling or RopeScaling())

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate ``x`` of shape ``(B, H, T, D)``; ``positions`` ``(B, T)``, default ``0 .. T-1``."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)[None]  # (1, T)
        angles = positions[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2), float32
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, D)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return x * cos + rotated * sin


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """The ``head_dim / 2`` inverse frequencies, float32, scaled as ``scaling`` says."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        assert scaling.original_max_position_embeddings is not None  # RopeScaling checks it
        original = scaling.original_max_position_embeddings
        low_freq_wavelen = original / scaling.low_freq_factor  # longer wavelengths are stretched by factor
        high_freq_wavelen = original / scaling.high_freq_factor  # shorter ones are kept
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class CausalSelfAttention(nn.Module):
    """Causal self-attention with grouped-query heads (Ainslie et al., 2023); heads split across TP ranks.

    Query, key and value projections are separate column-parallel layers (Llama's
    ``q_proj``/``k_proj``/``v_proj``): with fewer key/value heads than query heads they
    differ in size, and each rank takes whole key/value heads with their query groups.
    ``mask`` ``(B, 1, T, T)`` (True: attend) replaces the causal mask, e.g. to keep
    packed examples apart.
    """

    def __init__(self, shape: TransformerShape, rotary: RotaryEmbedding) -> None:
        super().__init__()
        tp = tensor_parallel_size()
        self.head_dim = shape.head_dim
        self.rotary = rotary
        init = normal_init(shape.init_std)
        q_width, kv_width = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.q = ColumnParallelLinear(shape.hidden_size, q_width, init_method=init, bias=shape.qkv_bias)
        self.k = ColumnParallelLinear(shape.hidden_size, kv_width, init_method=init, bias=shape.qkv_bias)
        self.v = ColumnParallelLinear(shape.hidden_size, kv_width, init_method=init, bias=shape.qkv_bias)
        self.proj = RowParallelLinear(
            q_width, shape.hidden_size, init_method=scaled_init(shape.init_std, shape.num_layers)
        )
        self.local_heads = shape.num_heads // tp

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = (rearrange(p(x), "b t (h d) -> b h t d", d=self.head_dim) for p in (self.q, self.k, self.v))
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        y = grouped_attention(q, k, v, mask)  # (B, H / tp, T, D)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, expand_kv: bool | None = None
) -> torch.Tensor:
    """Causal (``mask`` None) or masked SDPA of ``q`` ``(B, H, T, D)`` over ``k``, ``v`` ``(B, H_kv, T, D)``.

    ``expand_kv`` (default: on CUDA with a mask) repeats each key/value head over its query group
    first: CUDA's SDPA runs ``enable_gqa`` only in its flash and math kernels, and flash takes no
    mask, so a masked grouped call would fall to the math kernel and keep ``(B, H, T, T)`` scores
    for backward (PyTorch's SDPA documentation). The CPU kernel takes both; there the repeat
    only costs memory.
    """
    groups = q.shape[1] // k.shape[1]
    if expand_kv is None:
        expand_kv = mask is not None and q.is_cuda
    if groups > 1 and expand_kv:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        groups = 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=groups > 1)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; hidden units split across TP ranks."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.gate_up = ColumnParallelLinear(
            shape.hidden_size, 2 * shape.ffn_hidden_size, init_method=normal_init(shape.init_std)
        )
        self.gate_up.weight.fused_rows = (2, 1)  # rows are (unit, gate|up): two matrices
        self.down = RowParallelLinear(
            shape.ffn_hidden_size, shape.hidden_size, init_method=scaled_init(shape.init_std, shape.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = rearrange(self.gate_up(x), "b t (f two) -> two b t f", two=2)  # (B, T, F / tp) each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, shape: TransformerShape, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.attn = CausalSelfAttention(shape, rotary)
        self.ffn_norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.ffn = SwiGLU(shape)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        # Unpacked batches call attention as attn(x), the signature a replace_attention plugin may be
        # written for; packed ones also pass positions and the segment mask.
        x = x + (self.attn(h) if positions is None and mask is None else self.attn(h, positions, mask))
        return x + self.ffn(self.ffn_norm(x))


class TransformerDecoder(nn.Module, Generic[BlockT]):
    """What the llm and mixed_modal decoders share: a vocab-parallel token embedding,
    ``shape.num_layers`` blocks ``block(shape, rotary)`` (one rotary table for all), a final
    RMSNorm and a column-parallel head, or the embedding itself when ``tie_embeddings``.
    A subclass's ``forward`` runs the blocks between :meth:`check_length` and :meth:`logits`."""

    def __init__(self, shape: TransformerShape, block: Callable[[TransformerShape, RotaryEmbedding], BlockT]) -> None:
        super().__init__()
        tp = tensor_parallel_size()
        if shape.num_kv_heads % tp or shape.num_heads % shape.num_kv_heads:
            raise ValueError(
                f"num_heads={shape.num_heads}, num_kv_heads={shape.num_kv_heads} do not split into whole "
                f"key/value groups over tensor parallel size {tp}"
            )
        self.shape = shape
        self.embed = VocabParallelEmbedding(
            shape.vocab_size, shape.hidden_size, init_method=normal_init(shape.init_std)
        )
        rotary = RotaryEmbedding(shape.head_dim, shape.rope_theta, shape.rope_scaling)
        self.layers = nn.ModuleList([block(shape, rotary) for _ in range(shape.num_layers)])
        self.norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.head: ColumnParallelLinear | None = None
        if not shape.tie_embeddings:
            self.head = ColumnParallelLinear(
                shape.hidden_size, shape.vocab_size, init_method=normal_init(shape.init_std)
            )

    @property
    def blocks(self) -> list[BlockT]:
        """``layers``, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("list[BlockT]", list(self.layers))

    def check_length(self, input_ids: torch.Tensor) -> None:
        if input_ids.shape[1] > self.shape.max_seq_len:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens exceeds max_seq_len={self.shape.max_seq_len}")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The last blocks' output ``(B, T, C)`` to vocab-parallel logits ``(B, T, V / tp)``."""
        x = self.norm(x)
        if self.head is not None:
            return self.head(x)  # (B, T, V / tp)
        # Tied: the vocab-sharded embedding matrix is the column-parallel head.
        return F.linear(copy_to_tp_region(x), self.embed.weight)


class DecoderLM(TransformerDecoder[Block]):
    """Token ids ``(B, T)`` to vocab-parallel logits ``(B, T, V / tp)``.

    A packed batch gives ``segment_ids`` ``(B, T)`` (which example each token belongs
    to) and ``position_ids`` (restarting at 0 per example): attention then stays within
    each example, as if each had its own row.

    ``vocab_size`` is the tokenizer's (the checkpoint's embedding rows); ``shape.vocab_size``
    may be larger, padded to split over TP ranks. The padding's logits are ``-inf``, so
    they take no probability: the loss is what the unpadded model's is.
    """

    def __init__(self, shape: TransformerShape, vocab_size: int | None = None) -> None:
        super().__init__(shape, Block)
        self.vocab_size = vocab_size or shape.vocab_size
        if not 0 < self.vocab_size <= shape.vocab_size:
            raise ValueError(f"vocab_size={vocab_size} must be in 1..{shape.vocab_size} (the padded vocabulary)")

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_length(input_ids)
        mask = None if segment_ids is None else segment_mask(segment_ids)
        x = self.embed(input_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, position_ids, mask)
        logits = self.logits(x)  # (B, T, V / tp)
        if self.vocab_size < self.shape.vocab_size:
            first = tensor_parallel_rank() * logits.shape[-1]  # this rank's first vocabulary id
            padding = torch.arange(first, first + logits.shape[-1], device=logits.device) >= self.vocab_size
            logits = logits.masked_fill(padding, float("-inf"))
        return logits


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T, T)`` boolean: token ``i`` attends to ``j <= i`` of its own segment."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(same.shape[-2:], dtype=torch.bool, device=same.device).tril()
    return (same & causal)[:, None]


def copy_to_tp_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, all-reduce of the gradient over TP ranks (Megatron's ``f``)."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

    return copy_to_tensor_model_parallel_region(x)
