"""An early-fusion decoder over one sequence of text and image tokens (Chameleon-style, Team, 2024).

The llm family's blocks (RMSNorm, rotary causal self-attention, SwiGLU, all
on Megatron-Core's tensor-parallel layers), with one difference: every
feed-forward module is called as ``ffn(x, context)``, where ``context`` is the
:class:`TokenContext` of the batch — each token's modality and whether it is
padding — so a replacement FFN (``modality_experts``) can route by modality.
The context also collects auxiliary losses and statistics that such modules
produce; the objective adds the losses and logs the statistics. Nothing
travels through globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from jevons.recipes.llm.model import (
    CausalSelfAttention,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerDecoder,
    TransformerShape,
)


@dataclass
class TokenContext:
    """Per-token side information for one forward pass, and what modules report back.

    :param modality: ``(B, T)`` modality id of each input token (an index into ``modalities``).
    :param real: ``(B, T)`` True for real tokens, False for padding (which routing skips).
    :param modalities: the modality names, in id order.
    :param aux_losses: name -> scalar, added to the training loss by the objective.
    :param stats: name -> scalars reported by modules (one per layer, say); the objective logs their mean.
    """

    modality: torch.Tensor
    real: torch.Tensor | None = None
    modalities: tuple[str, ...] = ("text", "image")
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add_loss(self, name: str, value: torch.Tensor) -> None:
        self.aux_losses[name] = self.aux_losses[name] + value if name in self.aux_losses else value

    def add_stat(self, name: str, value: torch.Tensor) -> None:
        self.stats.setdefault(name, []).append(value.detach().float())


class DenseFFN(SwiGLU):
    """The llm family's SwiGLU, taking (and ignoring) the token context."""

    def forward(self, x: torch.Tensor, context: TokenContext | None = None) -> torch.Tensor:
        return super().forward(x)


class MixedBlock(nn.Module):
    def __init__(self, shape: TransformerShape, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.attn = CausalSelfAttention(shape, rotary)
        self.ffn_norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.ffn: nn.Module = DenseFFN(shape)

    def forward(self, x: torch.Tensor, context: TokenContext) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x), context)


class MixedModalDecoder(TransformerDecoder[MixedBlock]):
    """Token ids ``(B, T)`` (and their context) to vocab-parallel logits ``(B, T, V / tp)``.

    ``first_image_code`` is the id of the first image code: without a context,
    modalities are read off the ids (generation).
    """

    def __init__(
        self, shape: TransformerShape, first_image_code: int, modalities: tuple[str, ...] = ("text", "image")
    ) -> None:
        super().__init__(shape, MixedBlock)
        self.first_image_code = first_image_code
        self.modalities = modalities

    def context_for(self, input_ids: torch.Tensor, real: torch.Tensor | None = None) -> TokenContext:
        return TokenContext((input_ids >= self.first_image_code).long(), real, self.modalities)

    def forward(self, input_ids: torch.Tensor, context: TokenContext | None = None) -> torch.Tensor:
        self.check_length(input_ids)
        context = context if context is not None else self.context_for(input_ids)
        x = self.embed(input_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, context)
        return self.logits(x)
