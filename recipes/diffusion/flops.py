"""Training FLOPs of the Wan transformer (diffusers' ``WanTransformer3DModel``): the patch embedding,
the timestep and text embedders, each block's self-attention over the video tokens, cross-attention to
the text tokens and feed-forward, and the output projection (see :mod:`jevons.framework.flops`). The
frozen text encoder and VAE are not the model trained, so they are not counted."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jevons.framework.flops import TrainFlops


def wan_train_flops(
    config: Mapping[str, Any],
    batch: int,
    latent: Sequence[int],
    text_tokens: int,
    text_needs_grad: bool,
    tensor_parallel: int = 1,
) -> float | None:
    """One step on ``batch`` latents of shape ``latent`` = ``(C, F, H, W)`` attending to ``text_tokens``
    condition tokens each; ``text_needs_grad`` when the condition is learned (a class table). None for
    an image-to-video transformer (image embedder, added key/value projections), which is not counted."""
    if config.get("image_dim") or config.get("added_kv_proj_dim"):
        return None
    patch = tuple(config["patch_size"])
    channels, frames, height, width = latent
    tokens = (frames // patch[0]) * (height // patch[1]) * (width // patch[2])
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    dim, ffn = heads * head_dim, int(config["ffn_dim"])
    video, text = batch * tokens, batch * text_tokens
    count = TrainFlops()
    count.matmul(video, channels * math.prod(patch), dim, input_needs_grad=False)  # patch embedding (noisy input)
    count.matmul(batch, int(config["freq_dim"]), dim, input_needs_grad=False)  # timestep sinusoid -> dim
    count.matmul(batch, dim, dim)
    count.matmul(batch, dim, 6 * dim)  # time_proj: the blocks' modulation
    count.matmul(text, int(config["text_dim"]), dim, input_needs_grad=text_needs_grad)
    count.matmul(text, dim, dim)
    blocks = TrainFlops()
    for _ in range(int(config["num_layers"])):
        blocks.matmul(video, dim, 3 * dim)  # self-attention q, k, v
        blocks.attention(batch, heads, tokens, tokens, head_dim)
        blocks.matmul(video, dim, dim)
        blocks.matmul(video, dim, dim)  # cross-attention q
        blocks.matmul(text, dim, 2 * dim)  # cross-attention k, v of the text tokens
        blocks.attention(batch, heads, tokens, text_tokens, head_dim)
        blocks.matmul(video, dim, dim)
        blocks.matmul(video, dim, ffn)
        blocks.matmul(video, ffn, dim)
    count.matmul(video, dim, int(config["out_channels"]) * math.prod(patch))  # proj_out
    # Tensor parallelism shards the blocks (heads and the FFN); the embedders and proj_out are replicated.
    return count.total + blocks.total / tensor_parallel
