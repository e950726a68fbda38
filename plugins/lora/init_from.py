"""Starting a run from an existing adapter: the files ``jevons export adapter=true`` writes, and the same
layouts from other tools (a peft adapter folder over Hugging Face names; diffusers' Wan LoRA file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from jevons.framework.errors import UsageError

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Module name (ours) to its whole ``(A, B)``, the scaling held in ``B``."""


def read_adapter(family: str, model: nn.Module, path: Path) -> Factors:
    """The adapter at ``path`` by our module names, whole (unsharded) and with the scaling in ``B``."""
    if family == "diffusion":
        return _by_module(_load(path, "pytorch_lora_weights.safetensors"), prefix="")
    if family == "llm":
        return _from_hugging_face_names(
            model, _by_module(_load(path, "adapter_model.safetensors"), "base_model.model.")
        )
    raise UsageError(
        f"lora.init_from: the {family} family has no adapter file layout to start from (llm: a peft adapter folder, "
        f"diffusion: diffusers' pytorch_lora_weights.safetensors)."
    )


def _load(path: Path, file_name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    file = path / file_name if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"lora.init_from={path}: no {file_name} there (what `jevons export adapter=true` writes).")
    return load_file(str(file))


def _by_module(tensors: dict[str, torch.Tensor], prefix: str) -> Factors:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        head, _, kind = key.removesuffix(".weight").rpartition(".")
        if kind not in ("lora_A", "lora_B") or not head.startswith(prefix):
            raise UsageError(f"lora.init_from: '{key}' is not a LoRA factor (…lora_A.weight or …lora_B.weight).")
        modules.setdefault(head.removeprefix(prefix), {})[kind] = tensor.float()
    incomplete = sorted(name for name, parts in modules.items() if len(parts) != 2)
    if incomplete:
        raise UsageError(f"lora.init_from: {', '.join(incomplete[:3])} lack lora_A or lora_B.")
    return {name: (parts["lora_A"], parts["lora_B"]) for name, parts in modules.items()}


def _from_hugging_face_names(model: nn.Module, theirs: Factors) -> Factors:
    """Hugging Face module names to ours; ``gate_proj`` and ``up_proj`` fuse into ``gate_up`` (rows
    interleaved), which needs one ``A`` for both (what Jevons' own export writes)."""
    from jevons.recipes.llm.hf_weights import name_table

    ours: Factors = {}
    used: set[str] = set()
    for name, names in name_table(model).items():  # type: ignore[arg-type]  # the llm family's DecoderLM
        modules = [n.removesuffix(".weight") for n in names]
        if not name.endswith(".weight") or not all(m in theirs for m in modules):
            continue
        used.update(modules)
        if len(modules) == 1:
            ours[name.removesuffix(".weight")] = theirs[modules[0]]
            continue
        (gate_a, gate_b), (up_a, up_b) = theirs[modules[0]], theirs[modules[1]]
        if not torch.equal(gate_a, up_a):
            raise UsageError(
                f"lora.init_from: {modules[0]} and {modules[1]} have different A matrices; Jevons fuses them into "
                f"one gate_up projection, whose adapter has one A. Leave the FFN out of lora.targets for this adapter."
            )
        ours[name.removesuffix(".weight")] = (gate_a, rearrange([gate_b, up_b], "two f r -> (f two) r"))
    unplaced = sorted(set(theirs) - used)
    if unplaced:
        raise UsageError(
            f"lora.init_from: the adapter holds {', '.join(unplaced[:3])}, which this model has no place for."
        )
    return ours


@torch.no_grad()
def load_adapter(model: nn.Module, factors: Factors, path: Path) -> None:
    """Copy ``factors`` into the model's adapters: this rank's shard of each, ``B`` divided by the layer's scaling."""
    from jevons.framework.adapters import adapter_layers
    from jevons.framework.tensor_parallel import tensor_parallel_rank, tensor_parallel_size
    from jevons.plugins.lora.layers import ColumnParallelLoRA, RowParallelLoRA

    layers: dict[str, Any] = dict(adapter_layers(model))
    if set(layers) != set(factors):
        missing, extra = sorted(set(layers) - set(factors)), sorted(set(factors) - set(layers))
        raise UsageError(
            f"lora.init_from={path} adapts other modules than this run: the run adapts {missing[:3]} which it lacks, "
            f"and it holds {extra[:3]} which the run does not adapt. Set lora.targets to the adapter's modules."
        )
    rank, size = tensor_parallel_rank(), tensor_parallel_size()
    for name, layer in layers.items():
        whole_a, whole_b = factors[name]
        lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if whole_a.shape[0] != lora_a.shape[0]:
            raise UsageError(
                f"lora.init_from={path}: {name} has rank {whole_a.shape[0]}; set lora.rank={whole_a.shape[0]}."
            )
        if isinstance(layer, RowParallelLoRA):
            whole_a = whole_a.chunk(size, dim=1)[rank]
        if isinstance(layer, ColumnParallelLoRA):
            whole_b = whole_b.chunk(size, dim=0)[rank]
        if whole_a.shape != lora_a.shape or whole_b.shape != lora_b.shape:
            raise UsageError(
                f"lora.init_from={path}: {name}'s factors are {tuple(whole_a.shape)} and {tuple(whole_b.shape)}, the "
                f"run's {tuple(lora_a.shape)} and {tuple(lora_b.shape)}: the adapter was trained on another model."
            )
        lora_a.copy_(whole_a)
        lora_b.copy_(whole_b / float(layer.scaling["default"]))
