"""Adapters (peft layers) in a loaded model: finding them, reading them out, merging them into the base.

The ``lora`` plugin puts peft layers into a family's model; everything that
reads a trained run back (``jevons export``, sampling) goes through here, so
no family needs to know which plugin trained it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def adapter_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every peft adapter layer (a ``BaseTunerLayer`` module) in ``model``, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


@contextmanager
def active_adapter(model: nn.Module, adapter: str | None) -> Iterator[None]:
    """Run ``model`` with only ``adapter`` active in every adapter layer, or with none (the frozen base).

    One base, several networks: step distillation's teacher is the base with adapters off and its
    fake score the base with an adapter of its own. peft's ``set_adapter`` and ``enable_adapters``
    also change ``requires_grad`` (an inactive adapter is frozen), which would freeze the student in
    its own training step; this switches only what the layers' forward reads (``_active_adapter``,
    ``_disable_adapters``, peft >= 0.17) and restores it afterwards.
    """
    layers = [layer for _, layer in adapter_layers(model)]
    saved = [(layer._active_adapter, layer._disable_adapters) for layer in layers]
    try:
        for layer in layers:
            if adapter is None:
                layer._disable_adapters = True
            else:
                layer._active_adapter, layer._disable_adapters = [adapter], False
        yield
    finally:
        for layer, (active, disabled) in zip(layers, saved, strict=True):
            layer._active_adapter, layer._disable_adapters = active, disabled


def adapter_switches(module: nn.Module) -> list[tuple[Any, Any, bool]]:
    """``(layer, active adapters, disabled)`` of every adapter layer in ``module``: what
    :func:`active_adapter` switches, to be put back by :func:`switched_as`."""
    return [(layer, layer._active_adapter, layer._disable_adapters) for _, layer in adapter_layers(module)]


@contextmanager
def switched_as(switches: list[tuple[Any, Any, bool]]) -> Iterator[None]:
    """Run with the adapter layers switched as :func:`adapter_switches` recorded them."""
    current = [(layer, layer._active_adapter, layer._disable_adapters) for layer, _, _ in switches]
    try:
        for layer, active, disabled in switches:
            layer._active_adapter, layer._disable_adapters = active, disabled
        yield
    finally:
        for layer, active, disabled in current:
            layer._active_adapter, layer._disable_adapters = active, disabled


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
