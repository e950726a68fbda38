"""``parallel.ulysses`` for the diffusion transformer: its blocks on this rank's tokens, self-attention whole.

Where the sequence is split and gathered (:mod:`jevons.framework.ulysses`), on
diffusers' ``WanTransformer3DModel`` without changing its forward (the places
diffusers' own context-parallel plan for Wan names):

* the rotary tables (``rope``'s output) and the blocks' input: this rank's
  contiguous ``1/u`` of the tokens, padded to a multiple of ``u``;
* ``proj_out``'s output: gathered and unpadded, so unpatchify sees the whole sequence;
* each block's self-attention (``attn1``): :class:`UlyssesWanProcessor`, an
  all-to-all to head shards around the attention itself. Cross-attention
  (``attn2``) needs none: its queries are the local tokens, its keys the
  whole conditioning.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from jevons.framework.compat import wan_self_attention_heads
from jevons.framework.ulysses import gather_tokens, split_tokens, to_head_shards, to_token_shards


class UlyssesWanProcessor:
    """diffusers' ``WanAttnProcessor`` for self-attention, with the all-to-alls around attention."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("parallel.ulysses splits self-attention only (no encoder states, no mask).")
        query, key, value = wan_self_attention_heads(attn, hidden_states, rotary_emb)  # (B, S/u, H, D)
        q, k, v = (to_head_shards(x).transpose(1, 2) for x in (query, key, value))  # (B, H/u, S, D)
        out = F.scaled_dot_product_attention(q, k, v)
        out = to_token_shards(out.transpose(1, 2)).flatten(2).type_as(query)  # (B, S/u, H * D)
        return attn.to_out[1](attn.to_out[0](out))


def _split_rotary(module: torch.nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
    return tuple(split_tokens(table, dim=1) for table in output)  # (1, S/u, 1, D) each


def _split_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    hidden, *rest = args
    return (split_tokens(hidden, dim=1), *rest)  # (B, S/u, C)


def _gather_output(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return gather_tokens(output, dim=1)  # (B, S, C_out)


def apply_ulysses(transformer: Any) -> None:
    """Install the split, the gather and the self-attention processor on ``transformer`` (in place)."""
    transformer.rope.register_forward_hook(_split_rotary)
    transformer.blocks[0].register_forward_pre_hook(_split_input)
    transformer.proj_out.register_forward_hook(_gather_output)
    for block in transformer.blocks:
        block.attn1.set_processor(UlyssesWanProcessor())
