"""Adapters (peft layers) in a loaded model: finding them, reading them out, merging them into the base.

The ``lora`` plugin puts peft layers into a family's model; everything that
reads a trained run back (``jevons export``, sampling) goes through here, so
no family needs to know which plugin trained it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def adapter_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every peft adapter layer (a ``BaseTunerLayer`` module) in ``model``, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def lora_factors(model: nn.Module, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Per adapted module name, its LoRA ``(A, B, scaling)``: ``W + scaling * B @ A`` is the merged weight."""
    factors = {}
    for name, layer in adapter_layers(model):
        lora_a, lora_b = getattr(layer, "lora_A", {}), getattr(layer, "lora_B", {})
        if adapter in lora_a:
            scaling = float(layer.scaling[adapter])
            factors[name] = (lora_a[adapter].weight.detach(), lora_b[adapter].weight.detach(), scaling)
    return factors


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the plain base layer back in its place.

    Afterwards the model has the base model's modules and parameter names (what a family's export
    writes) and computes what the adapted model computed. Returns the number of layers merged.
    """
    layers = adapter_layers(model)
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
    return len(layers)
