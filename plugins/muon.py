"""``muon``: train hidden weight matrices with Muon, everything else with AdamW.

Seed: "Muon: Training and Trade-offs with Latent Attention and MoE" (Muon
reaches AdamW's loss with 48-52% of the compute on 30M-200M decoders); method
from Jordan et al. (2024) and Liu et al. (2025, Moonlight). The optimizer
itself is :mod:`jevons.plugins.muon_optimizer`; Newton–Schulz is the
``newton_schulz`` kernel op (:mod:`jevons.kernels`).

Which parameters get Muon is decided by role and shape, never by names:

* **embedding** (AdamW): weights of modules with a vocabulary (``nn.Embedding``,
  Megatron's ``VocabParallelEmbedding``), whatever they are called;
* **output head** (AdamW): linear layers outside the repeated blocks that map
  to an embedding's vocabulary; a tied head is the embedding itself. In a
  model without embeddings (a diffusion transformer, a ViT) the first and last
  weight layers are its input stem and output head;
* **gain/bias** (AdamW): every parameter with fewer than two dimensions;
* **Muon**: every other parameter with two or more dimensions: matrices as
  they are, convolution kernels flattened to ``(out, in * k...)``, other 3-D+
  weights treated as stacks of matrices (experts), each orthogonalised.

``muon.include`` / ``muon.exclude`` (fnmatch patterns over parameter names)
override the split explicitly; routing a parameter that is not a matrix to
Muon is refused. The run prints the split.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import torch

PLUGIN_INFO = PluginInfo(
    description="Muon (Newton-Schulz orthogonalised momentum) for hidden matrices, AdamW for the rest"
)


@dataclass
class MuonConfig:
    lr_scale: Literal["moonlight", "keller"] = "moonlight"
    """Per-matrix update scale. ``moonlight``: 0.2 * sqrt(max(rows, cols)), which matches
    AdamW's update RMS, so ``optimizer.lr`` and ``optimizer.weight_decay`` carry over (default).
    ``keller``: sqrt(max(1, rows / cols)) with its own, larger ``muon.lr``."""
    lr: float | None = None
    """Learning rate of the Muon groups; null means ``optimizer.lr`` (moonlight) or 0.02 (keller)."""
    weight_decay: float | None = None
    """Decoupled weight decay of the Muon groups; null means ``optimizer.weight_decay``."""
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    """Newton-Schulz iterations (quintic, coefficients 3.4445, -4.7750, 2.0315)."""
    ns_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Newton-Schulz arithmetic: ``auto`` is bfloat16 where the device multiplies it fast
    (Ampere+ GPUs, CPUs with AMX), float32 elsewhere."""
    include: list[str] = field(default_factory=list)
    """Parameter-name patterns forced to Muon (they must be matrices)."""
    exclude: list[str] = field(default_factory=list)
    """Parameter-name patterns forced to AdamW."""


KELLER_DEFAULT_LR = 0.02


@hookimpl
def register_config(register):
    register("muon", MuonConfig)


@hookimpl
def configure(config):
    cfg: MuonConfig = config.muon
    if cfg.lr is not None and cfg.lr <= 0:
        raise UsageError(f"muon.lr={cfg.lr} must be positive (or null to derive it from optimizer.lr).")
    if cfg.weight_decay is not None and cfg.weight_decay < 0:
        raise UsageError(f"muon.weight_decay={cfg.weight_decay} must be 0 or more.")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UsageError(f"muon.momentum={cfg.momentum} must be in [0, 1).")
    if cfg.ns_steps < 1:
        raise UsageError(f"muon.ns_steps={cfg.ns_steps} must be at least 1.")


@dataclass
class Assignment:
    name: str
    param: Any
    role: str  # why it got its optimizer
    view: str = ""  # for Muon: matrix, flatten or stack


def split_parameters(
    model: torch.nn.Module, include: list[str] = (), exclude: list[str] = ()
) -> tuple[list[Assignment], list[Assignment]]:
    """``(muon, adamw)`` assignments for every trainable parameter, by role and shape."""
    import torch

    from jevons.plugins.muon_optimizer import FLATTEN, MATRIX, STACK

    owners: dict[int, torch.nn.Module] = {}
    in_blocks: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), module)
        if isinstance(module, torch.nn.ModuleList):
            in_blocks.update(id(m) for m in module.modules())
    embeddings = [m for m in model.modules() if hasattr(m, "num_embeddings") and getattr(m, "weight", None) is not None]
    vocabularies = {int(m.num_embeddings) for m in embeddings}
    weight_layers = [m for m in model.modules() if _out_features(m) is not None]
    if embeddings:
        heads = {id(m) for m in weight_layers if _out_features(m) in vocabularies and id(m) not in in_blocks}
        stems: set[int] = set()
    else:
        heads = {id(weight_layers[-1])} if weight_layers else set()
        stems = {id(weight_layers[0])} if weight_layers else set()

    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
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
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.out_channels
    if hasattr(module, "output_size") and hasattr(module, "input_size") and getattr(module, "weight", None) is not None:
        return int(module.output_size)  # Megatron's column/row-parallel linears: the full, unsharded width
    return None


@hookimpl
def make_optimizer(model, config):
    import torch

    from jevons.framework.tensor_parallel import tensor_parallel_group, tensor_parallel_size
    from jevons.kernels import dispatch
    from jevons.plugins.muon_optimizer import Muon, TensorParallelSeam, parameter_groups

    cfg: MuonConfig = config.muon
    muon, adamw = split_parameters(model, cfg.include, cfg.exclude)
    if cfg.lr_scale == "moonlight":
        muon_lr = cfg.lr or config.optimizer.lr
    else:
        muon_lr = cfg.lr or KELLER_DEFAULT_LR
    groups = parameter_groups(
        [(a.param, a.view) for a in muon],
        [a.param for a in adamw if a.param.ndim >= 2],
        [a.param for a in adamw if a.param.ndim < 2],
        lr=config.optimizer.lr,
        muon_lr=muon_lr,
        weight_decay=config.optimizer.weight_decay,
        muon_weight_decay=config.optimizer.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        rule=cfg.lr_scale,
        betas=tuple(config.optimizer.betas),
        eps=config.optimizer.eps,
    )
    _print_split(muon, adamw)
    seam = TensorParallelSeam(tensor_parallel_group() if tensor_parallel_size() > 1 else None)
    newton_schulz = dispatch.get("newton_schulz")
    if cfg.ns_dtype != "auto":
        newton_schulz = functools.partial(newton_schulz, compute_dtype=getattr(torch, cfg.ns_dtype))
    return Muon(groups, newton_schulz=newton_schulz, seam=seam)


@hookimpl
def register_callbacks(register, config):
    from jevons.plugins.muon_optimizer import MuonReport

    register(MuonReport())


def _print_split(muon: list[Assignment], adamw: list[Assignment]) -> None:
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
