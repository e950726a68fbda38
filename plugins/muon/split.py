"""Which parameters Muon takes: by role and shape, never by names (the rules are in :mod:`jevons.plugins.muon`)."""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jevons.framework.errors import UsageError
from jevons.framework.optim import optimized_by_model_optimizer
from jevons.plugins.muon.optimizer import FLATTEN, MATRIX, STACK


@dataclass
class Assignment:
    name: str
    param: torch.nn.Parameter
    role: str  # why it got its optimizer
    view: str = ""  # for Muon: matrix, flatten or stack


def split_parameters(
    model: torch.nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Assignment], list[Assignment]]:
    """``(muon, adamw)`` assignments for every trainable parameter, by role and shape."""
    owners: dict[int, torch.nn.Module] = {}
    in_blocks: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), module)
        if isinstance(module, torch.nn.ModuleList):
            in_blocks.update(id(m) for m in module.modules())
    # nn.Embedding or Megatron's VocabParallelEmbedding (untyped): recognised by the attribute alone.
    embeddings: list[Any] = [
        m for m in model.modules() if hasattr(m, "num_embeddings") and getattr(m, "weight", None) is not None
    ]
    vocabularies = {int(m.num_embeddings) for m in embeddings}
    weight_layers = [m for m in model.modules() if _out_features(m) is not None]
    if embeddings:
        heads = {id(m) for m in weight_layers if _out_features(m) in vocabularies and id(m) not in in_blocks}
        stems: set[int] = set()
    else:
        heads = {id(weight_layers[-1])} if weight_layers else set()
        stems = {id(weight_layers[0])} if weight_layers else set()

    muon: list[Assignment] = []
    adamw: list[Assignment] = []
    for name, p in model.named_parameters():
        if not optimized_by_model_optimizer(p):
            continue
        owner = owners[id(p)]
        is_conv = isinstance(owner, torch.nn.modules.conv._ConvNd)
        view = FLATTEN if is_conv and p.ndim > 2 else MATRIX if p.ndim == 2 else STACK
        if any(fnmatch.fnmatch(name, pattern) for pattern in include):
            if p.ndim < 2:
                raise UsageError(
                    f"muon.include routes '{name}' (shape {tuple(p.shape)}) to Muon, but Muon orthogonalises "
                    f"matrices only. Remove the pattern that matches it; gains and biases belong to AdamW."
                )
            muon.append(Assignment(name, p, "included by muon.include", view))
        elif any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
            adamw.append(Assignment(name, p, "excluded by muon.exclude"))
        elif owner in embeddings:
            adamw.append(Assignment(name, p, "embedding"))
        elif id(owner) in heads:
            adamw.append(Assignment(name, p, "output head"))
        elif id(owner) in stems:
            adamw.append(Assignment(name, p, "input stem"))
        elif p.ndim < 2:
            adamw.append(Assignment(name, p, "gain/bias"))
        else:
            muon.append(
                Assignment(
                    name, p, {MATRIX: "hidden matrix", FLATTEN: "conv kernel", STACK: "matrix stack"}[view], view
                )
            )
    return muon, adamw


def _out_features(module: Any) -> int | None:
    """Output width of a weight layer (Linear, Megatron linear, Conv), or None for other modules."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.out_channels
    if hasattr(module, "output_size") and hasattr(module, "input_size") and getattr(module, "weight", None) is not None:
        return int(module.output_size)  # Megatron's column/row-parallel linears: the full, unsharded width
    return None


def print_split(muon: list[Assignment], adamw: list[Assignment]) -> None:
    """The split, one line per parameter, on rank zero's stderr."""
    from jevons.framework.distributed import is_rank_zero

    if not is_rank_zero():
        return
    lines = ["muon: parameter split (by role and shape)"]
    for label, assignments in (("Muon", muon), ("AdamW", adamw)):
        total = sum(a.param.numel() for a in assignments)
        lines.append(f"  {label}: {len(assignments)} tensors, {total:,} parameters")
        for a in assignments:
            lines.append(f"    {a.name:48s} {tuple(a.param.shape)!s:18s} {a.role}")
    print("\n".join(lines), file=sys.stderr, flush=True)
