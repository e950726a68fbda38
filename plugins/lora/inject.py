"""Putting LoRA adapters on a family's model with peft, deterministically at every tensor-parallel size."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from jevons.framework.errors import UsageError

FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    # diffusers' Wan names, self- and cross-attention alike (what diffusers' own Wan LoRAs adapt).
    "diffusion": ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"),
    "llm": ("attn.q", "attn.k", "attn.v", "attn.proj", "ffn.gate_up", "ffn.down"),
    "mixed_modal": ("attn.q", "attn.k", "attn.v", "attn.proj", "ffn.gate_up", "ffn.down"),
    "speech": (
        "attn.query",
        "attn.key_value",
        "attn.out",
        "cross_attn.query",
        "cross_attn.key_value",
        "cross_attn.out",
        "ffn.up",
        "ffn.down",
    ),
}
"""Per family, the module-name suffixes adapted by default: attention projections and the FFN."""


def default_targets(family: str) -> tuple[str, ...]:
    if family not in FAMILY_TARGETS:
        raise UsageError(
            f"The lora plugin has no default targets for family '{family}' (it knows {', '.join(sorted(FAMILY_TARGETS))}). "
            f"Name the modules to adapt: lora.targets=[to_q,to_v] (suffixes of module names)."
        )
    return FAMILY_TARGETS[family]


def add_adapters(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: int,
    dropout: float,
    seed: int,
    adapter: str = "default",
) -> list[str]:
    """Adapt every linear whose name ends with one of ``targets``; freeze everything else in ``model``.

    Returns the adapted module names. Each ``A`` is drawn from its own generator (seed, module name
    and, past the first, adapter name) as the whole matrix and then sliced to this rank's shard, so a
    model adapted at TP=N holds exactly the shards of the one adapted at TP=1, and the run's random
    stream is left untouched. A second ``adapter`` on the same layers trains too (step distillation's
    fake score); which one a forward uses is :func:`jevons.framework.adapters.active_adapter`'s.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from jevons.plugins.lora.layers import CUSTOM_LAYERS, RowParallelLoRA

    matched = [name for name, _ in model.named_modules() if any(_matches(name, t) for t in targets)]
    if not matched:
        raise UsageError(
            f"lora.targets={list(targets)} matches no module of this model. Module names end with, for example: "
            f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules() if _is_linear(m)})[:12])}."
        )
    adaptable = (LoraLayer,)  # an adapted linear takes a second adapter
    unsupported = [
        name for name in matched if not (_is_linear(m := model.get_submodule(name)) or isinstance(m, adaptable))
    ]
    if unsupported:
        raise UsageError(
            f"lora.targets matches {', '.join(unsupported[:3])}, "
            f"{'which is not a linear layer' if len(unsupported) == 1 else 'which are not linear layers'} "
            f"({type(model.get_submodule(unsupported[0])).__name__}); LoRA adapts linear layers only: name their "
            f"projections (attn.q, attn.proj)."
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    config._register_custom_module(CUSTOM_LAYERS)  # peft's documented (experimental) custom-layer API
    active = {name: m.active_adapters for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    with torch.random.fork_rng(devices=[]):
        inject_adapter_in_model(config, model, adapter_name=adapter)
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]
    for name, module in adapted:
        if name in active:  # peft makes the newest adapter the active one; the first stays the model's
            module.set_adapter(active[name])
        for factor in (module.lora_A[adapter], module.lora_B[adapter]):
            if factor.weight.is_meta:  # a base whose weights load after sharding: the adapters are made now
                factor.to_empty(device="cpu")
        _initialise(module, name, seed, adapter, sharded_input=isinstance(module, RowParallelLoRA))
        # peft leaves only the active adapter trainable; every adapter here trains, each in its own step.
        module.lora_A[adapter].requires_grad_(True)
        module.lora_B[adapter].requires_grad_(True)
    return [name for name, _ in adapted]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _is_linear(module: nn.Module) -> bool:
    from jevons.plugins.lora.layers import CUSTOM_LAYERS

    return isinstance(module, (nn.Linear, *CUSTOM_LAYERS))


@torch.no_grad()
def _initialise(layer: Any, name: str, seed: int, adapter: str, sharded_input: bool) -> None:
    """LoRA's initialisation (Hu et al., 2021): ``A`` Kaiming-uniform as ``nn.Linear`` draws it, ``B`` zero,
    so the adapted model starts as the base model."""
    from jevons.framework.tensor_parallel import tensor_parallel_rank, tensor_parallel_size

    key = name if adapter == "default" else f"{name}/{adapter}"
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    lora_a = layer.lora_A[adapter]  # peft's LoraLayer: ModuleDicts by adapter name
    rows, local_in = lora_a.weight.shape
    full_in = local_in * tensor_parallel_size() if sharded_input else local_in
    bound = 1.0 / math.sqrt(full_in)  # kaiming_uniform_(a=sqrt(5)) on a (rows, full_in) weight
    full = torch.empty(rows, full_in).uniform_(-bound, bound, generator=generator)
    start = tensor_parallel_rank() * local_in if sharded_input else 0
    lora_a.weight.copy_(full[:, start : start + local_in])
    layer.lora_B[adapter].weight.zero_()


def adapter_parameters(model: nn.Module, adapter: str | None = None) -> dict[str, nn.Parameter]:
    """The adapters' parameters by name (what trains and what a checkpoint holds): every adapter's, or
    ``adapter``'s alone."""
    found = {name: p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    return found if adapter is None else {n: p for n, p in found.items() if n.endswith(f".{adapter}.weight")}
