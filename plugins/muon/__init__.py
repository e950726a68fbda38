"""``muon``: train hidden weight matrices with Muon, everything else with AdamW.

Seed: "Muon: Training and Trade-offs with Latent Attention and MoE" (Muon
reaches AdamW's loss with 48-52% of the compute on 30M-200M decoders); method
from Jordan et al. (2024) and Liu et al. (2025, Moonlight). The optimizer
itself is :mod:`jevons.plugins.muon.optimizer`, the split below
:mod:`jevons.plugins.muon.split`, the run's figures :mod:`jevons.plugins.muon.report`;
Newton–Schulz is the ``newton_schulz`` kernel op (:mod:`jevons.kernels`).

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

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from jevons.framework.optim import Optimization


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
    """Newton-Schulz arithmetic: ``auto`` lets kernel dispatch time float32 and bfloat16 per shape
    class on this machine and keep the faster one within 2e-2 of float32 (``jevons kernels``)."""
    include: list[str] = field(default_factory=list)
    """Parameter-name patterns forced to Muon (they must be matrices)."""
    exclude: list[str] = field(default_factory=list)
    """Parameter-name patterns forced to AdamW."""


KELLER_DEFAULT_LR = 0.02


PLUGIN_INFO = PluginInfo(
    description="Muon (Newton-Schulz orthogonalised momentum) for hidden matrices, AdamW for the rest",
    config=MuonConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "muon", MuonConfig)
    if cfg.lr is not None and cfg.lr <= 0:
        raise UsageError(f"muon.lr={cfg.lr} must be positive (or null to derive it from optimizer.lr).")
    if cfg.weight_decay is not None and cfg.weight_decay < 0:
        raise UsageError(f"muon.weight_decay={cfg.weight_decay} must be 0 or more.")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UsageError(f"muon.momentum={cfg.momentum} must be in [0, 1).")
    if cfg.ns_steps < 1:
        raise UsageError(f"muon.ns_steps={cfg.ns_steps} must be at least 1.")


@hookimpl
def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer | Optimization | None:
    import torch

    from jevons.framework.tensor_parallel import tensor_parallel_group, tensor_parallel_size
    from jevons.kernels import dispatch
    from jevons.plugins.muon.optimizer import Muon, TensorParallelSeam, parameter_groups
    from jevons.plugins.muon.split import print_split, split_parameters

    cfg = section(config, "muon", MuonConfig)
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
        betas=(config.optimizer.betas[0], config.optimizer.betas[1]),
        eps=config.optimizer.eps,
    )
    print_split(muon, adamw)
    seam = TensorParallelSeam(tensor_parallel_group() if tensor_parallel_size() > 1 else None)
    newton_schulz = dispatch.get("newton_schulz")
    if cfg.ns_dtype != "auto":
        newton_schulz = functools.partial(newton_schulz, compute_dtype=getattr(torch, cfg.ns_dtype))
    return Muon(groups, newton_schulz=newton_schulz, seam=seam)


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.muon.report import MuonReport

    register(MuonReport())
