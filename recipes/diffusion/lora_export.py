"""A LoRA run's adapters as the file diffusers' Wan LoRA loaders read.

``WanPipeline.save_lora_weights`` writes ``pytorch_lora_weights.safetensors``
with peft's names under the ``transformer.`` prefix
(``transformer.blocks.0.attn1.to_q.lora_A.weight``), which
``WanPipeline.load_lora_weights`` and ``WanTransformer3DModel.load_lora_adapter``
load onto the base transformer. ``B`` holds the scaling and the file's
metadata says ``lora_alpha`` = r, so the update is the same whatever a loader
does with alpha.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from jevons.recipes.diffusion.model import DiffusionModel


def save_lora_file(model: DiffusionModel, out_dir: Path) -> list[Path]:
    """Write the transformer's adapters into ``out_dir`` (staged, then renamed); return the files."""
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    from jevons.framework.adapters import lora_factors
    from jevons.framework.errors import UsageError

    outside = sorted(set(lora_factors(model)) - {f"transformer.{name}" for name in lora_factors(model.transformer)})
    if outside:
        raise UsageError(
            f"Adapters outside the transformer ({', '.join(outside[:3])}) have no place in diffusers' Wan LoRA file; "
            f"target the transformer's modules only, or export without adapter=true for merged weights."
        )
    factors = lora_factors(model.transformer)
    if not factors:
        raise UsageError("Only adapters on the transformer export to diffusers' LoRA format; this model has none.")
    tensors: dict[str, torch.nn.Module | torch.Tensor] = {}
    for name, (lora_a, lora_b, scaling) in factors.items():
        tensors[f"{name}.lora_A.weight"] = lora_a.float().contiguous().clone()
        tensors[f"{name}.lora_B.weight"] = (lora_b.float() * scaling).contiguous().clone()
    ranks = sorted({a.shape[0] for a, _, _ in factors.values()})
    if len(ranks) != 1:
        raise UsageError(f"Adapters of different ranks {ranks} cannot share one LoRA file's metadata.")
    metadata = {"r": ranks[0], "lora_alpha": ranks[0], "target_modules": sorted(factors)}
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        WanPipeline.save_lora_weights(
            str(staging), transformer_lora_layers=tensors, transformer_lora_adapter_metadata=metadata
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(out_dir)
    return sorted(out_dir.iterdir())
