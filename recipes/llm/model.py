"""A decoder-only transformer (Llama-style) built from Megatron-Core's tensor-parallel layers.

Pre-norm blocks of RMSNorm, causal self-attention with rotary position
embeddings (Su et al., 2021, "RoFormer") through ``scaled_dot_product_attention``,
and a SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer").
Attention heads and the feed-forward hidden units are split Megatron-style
(Shoeybi et al., 2019): column-parallel QKV and gate/up projections,
row-parallel output projections, vocab-parallel embedding and output head.
At TP=1 the same layers run with no communication.

Tensors are batch-first: ``(B, T, C)``.
"""

from __future__ import annotations

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
    tensor_parallel_size,
)
from jevons.recipes.llm.shape import TransformerShape  # the model's sizes; also imported from here

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
    """Cos/sin tables for rotary embeddings, rotating pairs (i, i + head_dim/2)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``(B, H, T, D)``."""
        seq_len = x.shape[-2]
        cos, sin = self.cos[:seq_len].to(x.dtype), self.sin[:seq_len].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; heads split across TP ranks."""

    def __init__(self, shape: TransformerShape, rotary: RotaryEmbedding) -> None:
        super().__init__()
        tp = tensor_parallel_size()
        self.local_heads = shape.num_heads // tp
        self.head_dim = shape.head_dim
        self.rotary = rotary
        # One fused projection for Q, K and V, laid out head by head ([q, k, v] per
        # head), so Megatron's contiguous row split gives each rank whole heads.
        self.qkv = ColumnParallelLinear(
            shape.hidden_size, 3 * shape.hidden_size, init_method=normal_init(shape.init_std)
        )
        self.qkv.weight.fused_rows = (3, shape.head_dim)  # rows are (head, q|k|v, head_dim): three matrices
        self.proj = RowParallelLinear(
            shape.hidden_size, shape.hidden_size, init_method=scaled_init(shape.init_std, shape.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, 3 * C / tp), laid out [heads of this rank][q, k, v][head_dim]
        q, k, v = rearrange(qkv, "b t (h three d) -> three b h t d", three=3, d=self.head_dim)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H / tp, T, D)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class TransformerDecoder(nn.Module, Generic[BlockT]):
    """What the llm and mixed_modal decoders share: a vocab-parallel token embedding,
    ``shape.num_layers`` blocks ``block(shape, rotary)`` (one rotary table for all), a final
    RMSNorm and a column-parallel head, or the embedding itself when ``tie_embeddings``.
    A subclass's ``forward`` runs the blocks between :meth:`check_length` and :meth:`logits`."""

    def __init__(self, shape: TransformerShape, block: Callable[[TransformerShape, RotaryEmbedding], BlockT]) -> None:
        super().__init__()
        tp = tensor_parallel_size()
        if shape.num_heads % tp:
            raise ValueError(f"num_heads={shape.num_heads} is not divisible by tensor parallel size {tp}")
        self.shape = shape
        self.embed = VocabParallelEmbedding(
            shape.vocab_size, shape.hidden_size, init_method=normal_init(shape.init_std)
        )
        rotary = RotaryEmbedding(shape.head_dim, shape.max_seq_len, shape.rope_theta)
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
    """Token ids ``(B, T)`` to vocab-parallel logits ``(B, T, V / tp)``."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__(shape, Block)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.check_length(input_ids)
        x = self.embed(input_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        return self.logits(x)


def copy_to_tp_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, all-reduce of the gradient over TP ranks (Megatron's ``f``)."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

    return copy_to_tensor_model_parallel_region(x)
