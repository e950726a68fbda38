"""Training FLOPs of the decoder (llm and mixed_modal families): per token, every projection of every
block and the head, and attention over the whole row (see :mod:`jevons.framework.flops`)."""

from __future__ import annotations

from jevons.framework.flops import TrainFlops
from jevons.recipes.llm.shape import TransformerShape


def decoder_train_flops(shape: TransformerShape, batch: int, length: int, tensor_parallel: int = 1) -> float:
    """One step on ``batch`` rows of ``length`` tokens (padding included: it is computed). Tensor
    parallelism splits every product evenly, so a rank does ``1 / tensor_parallel`` of it."""
    rows = batch * length
    q_width, kv_width = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    count = TrainFlops()
    for _ in range(shape.num_layers):
        count.matmul(rows, shape.hidden_size, q_width + 2 * kv_width)  # q, k, v
        count.attention(batch, shape.num_heads, length, length, shape.head_dim)
        count.matmul(rows, q_width, shape.hidden_size)  # proj
        count.matmul(rows, shape.hidden_size, 2 * shape.ffn_hidden_size)  # gate_up
        count.matmul(rows, shape.ffn_hidden_size, shape.hidden_size)  # down
    count.matmul(rows, shape.hidden_size, shape.vocab_size)  # the head (tied or not), padded vocabulary
    return count.total / tensor_parallel
