"""The diffusion family's tensor-parallel plan: Megatron layers swapped into a diffusers Wan transformer.

Applied to a transformer built (or loaded) whole, identically on every rank,
it replaces, in place and under the same attribute names (so parameter names
and ``save_pretrained`` keys stay those of diffusers):

* self- and cross-attention ``to_q``, ``to_k``, ``to_v``: column-parallel
  (each rank computes ``heads / tp`` heads), ``to_out.0``: row-parallel;
  ``attn.heads`` becomes the local head count the attention processor uses;
* the query/key RMSNorms, which Wan computes across *all* heads
  (``qk_norm="rms_norm_across_heads"``): their gains are sharded with the
  heads and the mean square is all-reduced over the tensor-parallel group;
* the feed-forward ``net.0.proj``: column-parallel, ``net.2``: row-parallel.

Each new layer holds this rank's slice of the original weights, so TP=N
starts from exactly the TP=1 model. Embeddings, modulation tables, norms
and the output projection stay replicated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from jevons.framework.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    tensor_parallel_group,
    tensor_parallel_size,
)

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel


def _rank() -> int:
    return torch.distributed.get_rank(tensor_parallel_group())


def _column(linear: nn.Linear) -> ColumnParallelLinear:
    layer = ColumnParallelLinear(
        linear.in_features, linear.out_features, init_method=nn.init.zeros_, bias=linear.bias is not None
    )
    rows = linear.out_features // tensor_parallel_size()
    start = _rank() * rows
    with torch.no_grad():
        layer.weight.copy_(linear.weight[start : start + rows])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias[start : start + rows])
    return layer


def _row(linear: nn.Linear) -> RowParallelLinear:
    layer = RowParallelLinear(
        linear.in_features, linear.out_features, init_method=nn.init.zeros_, bias=linear.bias is not None
    )
    cols = linear.in_features // tensor_parallel_size()
    start = _rank() * cols
    with torch.no_grad():
        layer.weight.copy_(linear.weight[:, start : start + cols])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer


class ShardedRMSNorm(nn.Module):
    """RMS norm over a dimension split across TP ranks: the mean square is summed over the group."""

    def __init__(self, norm: nn.RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
        self.full_dim = norm.weight.shape[0]
        local = self.full_dim // tensor_parallel_size()
        start = _rank() * local
        self.weight = nn.Parameter(norm.weight.detach()[start : start + local].clone())
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        squares = x.float().pow(2).sum(dim=-1, keepdim=True)
        # all_reduce with autograd: every rank's output depends on every rank's input.
        mean_square = all_reduce(squares, group=tensor_parallel_group()) / self.full_dim
        return (x.float() * torch.rsqrt(mean_square + self.eps)).type_as(x) * self.weight


def apply_tensor_parallel(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """Shard a ``WanTransformer3DModel`` in place over the current TP group (a no-op at TP=1)."""
    tp = tensor_parallel_size()
    if tp == 1:
        return transformer
    blocks: list[Any] = list(transformer.blocks)  # diffusers' modules, reached into and swapped by attribute name
    for block in blocks:
        for attention in (block.attn1, block.attn2):
            if attention.heads % tp:
                raise ValueError(f"{attention.heads} attention heads cannot be split over tensor parallel size {tp}")
            attention.to_q = _column(attention.to_q)
            attention.to_k = _column(attention.to_k)
            attention.to_v = _column(attention.to_v)
            attention.to_out[0] = _row(attention.to_out[0])
            if not isinstance(attention.norm_q, nn.Identity):
                attention.norm_q = ShardedRMSNorm(attention.norm_q)
                attention.norm_k = ShardedRMSNorm(attention.norm_k)
            attention.heads = attention.heads // tp
        block.ffn.net[0].proj = _column(block.ffn.net[0].proj)
        block.ffn.net[2] = _row(block.ffn.net[2])
    return transformer
