"""Training FLOPs of the speech recogniser: the convolutional subsampling, the encoder over the
subsampled frames, the decoder over the characters with cross-attention to the encoder, both heads
(see :mod:`jevons.framework.flops`)."""

from __future__ import annotations

from jevons.framework.flops import TrainFlops
from jevons.recipes.speech.family import ASRShape


def _halved(n: int) -> int:
    return (n - 1) // 2 + 1  # a stride-2, padding-1, kernel-3 convolution's output length


def recogniser_train_flops(shape: ASRShape, batch: int, frames: int, characters: int) -> float:
    """One step on ``batch`` utterances padded to ``frames`` feature frames and ``characters`` decoder inputs."""
    hidden, ffn, heads, vocab = shape.hidden_size, shape.ffn_hidden_size, shape.num_heads, shape.vocab_size
    channels = shape.subsampling_channels
    head_dim = hidden // heads
    count = TrainFlops()
    t1, m1 = _halved(frames), _halved(shape.num_mels)
    t2, m2 = _halved(t1), _halved(m1)
    count.matmul(batch * t1 * m1, 1 * 9, channels, input_needs_grad=False)  # the first conv reads the features
    count.matmul(batch * t2 * m2, channels * 9, channels)
    count.matmul(batch * t2, channels * m2, hidden)
    for _ in range(shape.encoder_layers):
        _attention_block(count, batch, t2, t2, hidden, heads, head_dim)
        _feed_forward(count, batch * t2, hidden, ffn)
    count.matmul(batch * t2, hidden, vocab)  # CTC head
    for _ in range(shape.decoder_layers):
        _attention_block(count, batch, characters, characters, hidden, heads, head_dim)
        _attention_block(count, batch, characters, t2, hidden, heads, head_dim)  # cross-attention
        _feed_forward(count, batch * characters, hidden, ffn)
    count.matmul(batch * characters, hidden, vocab)  # attention head
    return count.total


def _attention_block(
    count: TrainFlops, batch: int, queries: int, keys: int, hidden: int, heads: int, head_dim: int
) -> None:
    count.matmul(batch * queries, hidden, hidden)  # query
    count.matmul(batch * keys, hidden, 2 * hidden)  # key_value
    count.attention(batch, heads, queries, keys, head_dim)
    count.matmul(batch * queries, hidden, hidden)  # out


def _feed_forward(count: TrainFlops, rows: int, hidden: int, ffn: int) -> None:
    count.matmul(rows, hidden, ffn)
    count.matmul(rows, ffn, hidden)
