"""The weight-name adapter between the llm family's decoder and Hugging Face Llama, Qwen2 and Mistral.

One table, read both ways (torchtitan's ``state_dict_adapter``): :func:`hf_state_dict`
turns a model built at TP=1 into Hugging Face tensors for an export, and
:func:`load_hf_weights` fills a model built on the meta device at any TP size
from a folder's safetensors, each rank reading only its blocks.

Every name maps one to one except the feed-forward's fused ``gate_up``, whose
rows are ``(unit, gate|up)`` interleaved (one GEMM; modality experts upcycle
from it): it is read from ``gate_proj`` and ``up_proj`` and written back to
them. The vocabulary may be padded for TP: padded rows are zero on load and
left out on export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from einops import rearrange

from jevons.framework.tensor_parallel import tensor_parallel_rank, tensor_parallel_size
from jevons.framework.weights import WeightFiles, load_parameters, partition_of

if TYPE_CHECKING:
    from jevons.recipes.llm.model import DecoderLM

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Tensors some older checkpoints store that the model recomputes."""


def name_table(model: DecoderLM) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the Hugging Face tensor(s) it is made of (two: gate and up, interleaved)."""
    table: dict[str, tuple[str, ...]] = {
        "embed.weight": ("model.embed_tokens.weight",),
        "norm.weight": ("model.norm.weight",),
    }
    if model.head is not None:
        table["head.weight"] = ("lm_head.weight",)
    for i, _ in enumerate(model.blocks):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        table[ours + "attn_norm.weight"] = (theirs + "input_layernorm.weight",)
        table[ours + "ffn_norm.weight"] = (theirs + "post_attention_layernorm.weight",)
        for projection in "qkv":
            table[ours + f"attn.{projection}.weight"] = (theirs + f"self_attn.{projection}_proj.weight",)
            if model.shape.qkv_bias:
                table[ours + f"attn.{projection}.bias"] = (theirs + f"self_attn.{projection}_proj.bias",)
        table[ours + "attn.proj.weight"] = (theirs + "self_attn.o_proj.weight",)
        table[ours + "ffn.gate_up.weight"] = (theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight")
        table[ours + "ffn.down.weight"] = (theirs + "mlp.down_proj.weight",)
    return table


def hf_state_dict(model: DecoderLM, vocab_size: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model (built at TP=1) as Hugging Face tensors in ``dtype``, the vocabulary cut to ``vocab_size``."""
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs in name_table(model).items():
        value = params[ours].detach()
        if ours in ("embed.weight", "head.weight"):
            value = value[:vocab_size]
        if len(theirs) == 2:
            gate, up = rearrange(value, "(f two) c -> two f c", two=2)
            tensors.update({theirs[0]: gate, theirs[1]: up})
        else:
            tensors[theirs[0]] = value
    return {name: t.to(dtype).contiguous().clone() for name, t in tensors.items()}


def load_hf_weights(model: DecoderLM, files: WeightFiles, source: str) -> None:
    """Fill ``model`` (meta-built) from ``files``: each TP rank reads its own blocks, one tensor at a time."""
    from jevons.framework.errors import UsageError

    table = name_table(model)
    used = {name for names in table.values() for name in names}
    if model.head is None and "lm_head.weight" in files.names:
        used.add("lm_head.weight")  # tied: transformers may save the shared matrix under both names
    unused = sorted(n for n in files.names - used if not n.endswith(IGNORED_SUFFIXES))
    if unused:
        raise UsageError(
            f"{source} holds tensors the model built from its config.json has no place for: {unused[:6]} "
            f"({len(unused)} in all). The config and the weights disagree (tie_word_embeddings? biases?)."
        )
    absent = sorted(name for name in used - files.names if name != "lm_head.weight" or model.head is not None)
    if absent:
        raise UsageError(f"{source} lacks tensors the model needs: {absent[:6]} ({len(absent)} in all).")
    rank, size = tensor_parallel_rank(), tensor_parallel_size()
    params = dict(model.named_parameters())
    plan: dict[str, Callable[[], torch.Tensor]] = {}
    for ours, theirs in table.items():
        dim = partition_of(params[ours])
        padded = model.shape.vocab_size if ours in ("embed.weight", "head.weight") else None
        if len(theirs) == 2:
            plan[ours] = _interleaved(files, theirs, dim, rank, size)
        else:
            plan[ours] = _block(files, theirs[0], dim, rank, size, padded)
    load_parameters(model, plan, source)


def _block(
    files: WeightFiles, name: str, dim: int | None, rank: int, size: int, padded: int | None
) -> Callable[[], torch.Tensor]:
    return lambda: files.read_partition(name, dim, rank, size, padded)


def _interleaved(
    files: WeightFiles, names: tuple[str, ...], dim: int | None, rank: int, size: int
) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        gate, up = (files.read_partition(name, dim, rank, size) for name in names)
        return rearrange([gate, up], "two f c -> (f two) c")

    return read
