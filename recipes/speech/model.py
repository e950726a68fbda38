"""An attention encoder-decoder speech recogniser with a CTC head on the encoder (Canary-style, small).

Encoder: two stride-2 3x3 convolutions over (time, mel) subsample time 4x
(10 ms frames become 40 ms, enough for the 15-20 characters per second of
speech at 130-210 words per minute), then pre-norm transformer layers with
sinusoidal positions. Decoder: pre-norm transformer layers with causal
self-attention and cross-attention to the encoder, predicting characters.
The CTC head (a linear layer on the encoder output) gives the auxiliary loss
of hybrid CTC/attention training (Watanabe et al., 2017, "Hybrid
CTC/Attention Architecture for End-to-End Speech Recognition"); Canary
(Puvvada et al., 2024) trains the same shape at scale.

Data parallel only: the family declares no tensor parallelism.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from jevons.recipes.speech.family import ASRShape  # the model's sizes; also imported from here


def halved(lengths: torch.Tensor) -> torch.Tensor:
    """Frames out of a stride-2, padding-1, kernel-3 convolution: half, rounded up."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Encoder frames for ``lengths`` input frames (two halving convolutions)."""
    return halved(halved(lengths))


def sinusoidal_positions(
    length: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The transformer's fixed positional encodings (Vaswani et al., 2017), ``(length, dim)``, computed in
    fp32 and returned in ``dtype``."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table.to(dtype)


class ConvSubsampling(nn.Module):
    """Two stride-2 convolutions; frames past each utterance's length are zeroed before each one, so
    padding reaches no real frame (as a lone utterance, zero-padded by the convolution itself)."""

    def __init__(self, shape: ASRShape) -> None:
        super().__init__()
        channels = shape.subsampling_channels
        self.convs = nn.ModuleList(
            [nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.Conv2d(channels, channels, 3, stride=2, padding=1)]
        )
        mels = int(subsampled_lengths(torch.tensor(shape.num_mels)).item())
        self.out = nn.Linear(channels * mels, shape.hidden_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)  # (B, 1, T, mels)
        for conv in self.convs:
            keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
            x = F.relu(conv(x * keep[:, None, :, None]))
            lengths = halved(lengths)
        return self.out(x.transpose(1, 2).flatten(2))  # (B, T/4, hidden)


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``; ``mask`` is True where allowed."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        batch, length, hidden = x.shape
        q = self.query(x).view(batch, length, self.heads, -1).transpose(1, 2)
        k, v = self.key_value(memory).view(batch, memory.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal and mask is None
        )
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class EncoderLayer(nn.Module):
    def __init__(self, shape: ASRShape) -> None:
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.LayerNorm(shape.hidden_size), nn.LayerNorm(shape.hidden_size)
        self.attn = Attention(shape.hidden_size, shape.num_heads, shape.dropout)
        self.ffn = FeedForward(shape.hidden_size, shape.ffn_hidden_size, shape.dropout)
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, h, mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, shape: ASRShape) -> None:
        super().__init__()
        hidden = shape.hidden_size
        self.attn_norm, self.cross_norm, self.ffn_norm = (
            nn.LayerNorm(hidden),
            nn.LayerNorm(hidden),
            nn.LayerNorm(hidden),
        )
        self.attn = Attention(hidden, shape.num_heads, shape.dropout)
        self.cross_attn = Attention(hidden, shape.num_heads, shape.dropout)
        self.ffn = FeedForward(hidden, shape.ffn_hidden_size, shape.dropout)
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, h, causal=True))
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), memory, memory_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SpeechRecognizer(nn.Module):
    """``forward(features, feature_lengths, decoder_input)`` -> attention logits, CTC logits, encoder lengths."""

    def __init__(self, shape: ASRShape) -> None:
        super().__init__()
        self.shape = shape
        self.subsampling = ConvSubsampling(shape)
        self.encoder = nn.ModuleList(EncoderLayer(shape) for _ in range(shape.encoder_layers))
        self.encoder_norm = nn.LayerNorm(shape.hidden_size)
        self.ctc_head = nn.Linear(shape.hidden_size, shape.vocab_size)
        self.embedding = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.decoder = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.decoder_layers))
        self.decoder_norm = nn.LayerNorm(shape.hidden_size)
        self.head = nn.Linear(shape.hidden_size, shape.vocab_size)
        self.dropout = nn.Dropout(shape.dropout)

    @property
    def encoder_blocks(self) -> list[EncoderLayer]:
        """``encoder``, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("list[EncoderLayer]", list(self.encoder))

    @property
    def decoder_blocks(self) -> list[DecoderLayer]:
        """``decoder``, typed."""
        return cast("list[DecoderLayer]", list(self.decoder))

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states ``(B, T', hidden)`` and their valid lengths ``(B,)``."""
        feature_lengths = feature_lengths.to(features.device)
        # The encoder computes in its parameters' dtype (bf16 under bf16-true); features may be fp32.
        x = self.subsampling(features.to(self.subsampling.out.weight.dtype), feature_lengths)
        lengths = subsampled_lengths(feature_lengths)
        x = self.dropout(
            x * math.sqrt(self.shape.hidden_size) + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        )
        mask = self.padding_mask(lengths, x.shape[1])
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), lengths

    @staticmethod
    def padding_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, 1, 1, T)`` True at real frames, broadcast over heads and queries."""
        return (torch.arange(length, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]

    def decode(self, decoder_input: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor) -> torch.Tensor:
        """Next-character logits ``(B, L, vocab)`` for every prefix of ``decoder_input``."""
        x = self.embedding(decoder_input) * math.sqrt(self.shape.hidden_size)
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype))
        mask = self.padding_mask(memory_lengths, memory.shape[1])
        for layer in self.decoder:
            x = layer(x, memory, mask)
        return self.head(self.decoder_norm(x))

    def forward(
        self, features: torch.Tensor, feature_lengths: torch.Tensor, decoder_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        memory, lengths = self.encode(features, feature_lengths)
        return self.decode(decoder_input, memory, lengths), self.ctc_head(memory), lengths
