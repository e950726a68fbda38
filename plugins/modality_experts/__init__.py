"""``modality_experts``: modality-aware mixture-of-experts feed-forward layers (MoMa).

Seed: Lin et al., 2024, "MoMa: Efficient Early-Fusion Pre-training with
Mixture of Modality-Aware Experts": experts split into modality groups (4 text
+ 4 image), each group seeing only its modality's tokens and routing among its
experts by learned expert-choice routing; 3.7x FLOPs savings over a
compute-equivalent dense model. The layer is
:mod:`jevons.plugins.modality_experts.layer`, the run's figures
:mod:`jevons.plugins.modality_experts.report`.

The plugin answers ``replace_ffn`` for families whose model carries each
token's modality in its forward context (capability ``token_modalities``:
``mixed_modal``), replacing every ``layer_freq``-th feed-forward. Each expert
is the dense FFN's size, so at ``capacity_factor=1`` (expert choice) or
``router_topk=1`` (token choice) a token costs the dense FFN's FLOPs on
average. ``num_experts=[8]`` is the modality-blind baseline: one group of 8
experts every token routes in. Config names follow Megatron-Core's MoE
options where they fit (``num_experts``, ``moe_router_topk`` ->
``router_topk``, ``moe_expert_capacity_factor`` -> ``capacity_factor``,
``moe_aux_loss_coeff`` -> ``load_balancing_coeff``, ``moe_ffn_hidden_size``,
``moe_layer_freq``); Megatron's own router and dispatcher need CUDA and have
neither modality groups nor expert choice, so the routing is ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch


@dataclass
class ModalityExpertsConfig:
    num_experts: list[int] = field(default_factory=lambda: [4, 4])
    """Experts per modality group, in the family's modality order (mixed_modal: text, image).
    A single number makes one mixed group every token routes in (a standard MoE)."""
    routing: Literal["expert_choice", "token_choice"] = "expert_choice"
    capacity_factor: float = 1.0
    """Expert choice: each expert takes ceil(capacity_factor * group tokens / experts) tokens.
    Token choice: an expert keeps at most ceil(capacity_factor * router_topk * tokens / experts)."""
    router_topk: int = 1
    """Token choice only: experts per token."""
    load_balancing_coeff: float = 0.01
    """Token choice only: weight of the Switch load-balancing loss."""
    inference_routing: Literal["threshold", "auxiliary", "expert_choice"] = "threshold"
    """Expert choice at inference, token by token: ``threshold`` (each expert's moving-average training
    threshold on the router probability) or ``auxiliary`` routers (MoMa's); ``expert_choice`` keeps
    batch-level choice (sees later tokens: a reference only)."""
    moe_ffn_hidden_size: int | None = None
    """Hidden units per expert; null: the dense FFN's."""
    layer_freq: int = 1
    """Replace the FFN of every layer_freq-th layer, from the first."""


PLUGIN_INFO = PluginInfo(
    capabilities=("token_modalities",),
    description="Modality-aware expert groups with expert-choice routing (MoMa)",
    config=ModalityExpertsConfig,
)


@hookimpl
def configure(config: Config) -> None:
    cfg = section(config, "modality_experts", ModalityExpertsConfig)
    if not cfg.num_experts or any(n < 1 for n in cfg.num_experts):
        raise UsageError(
            f"modality_experts.num_experts={list(cfg.num_experts)} must be one positive count per modality "
            f"group, e.g. [4, 4] (text, image) or [8] (one mixed group)."
        )
    if cfg.capacity_factor <= 0:
        raise UsageError(f"modality_experts.capacity_factor={cfg.capacity_factor} must be positive.")
    if cfg.router_topk < 1 or cfg.router_topk > min(cfg.num_experts):
        raise UsageError(
            f"modality_experts.router_topk={cfg.router_topk} must be between 1 and the smallest group "
            f"({min(cfg.num_experts)} experts)."
        )
    if cfg.layer_freq < 1:
        raise UsageError(f"modality_experts.layer_freq={cfg.layer_freq} must be at least 1.")
    if config.parallel.tensor > 1:
        raise UsageError(
            f"modality_experts keeps whole experts on every rank and does not split them over "
            f"parallel.tensor={config.parallel.tensor} ranks (expert parallelism is CUDA-side, "
            f"docs/architecture.md). Use parallel.tensor=1 with more data-parallel ranks."
        )


@hookimpl
def replace_ffn(module: torch.nn.Module, name: str, layer_index: int, config: Config) -> torch.nn.Module | None:
    import math

    from jevons.plugins.modality_experts.layer import ModalityExperts

    cfg = section(config, "modality_experts", ModalityExpertsConfig)
    if layer_index % cfg.layer_freq:
        return None
    gate_up = module.get_parameter("gate_up.weight")  # the family's dense SwiGLU: fused (2 * ffn, hidden)
    hidden_size = int(gate_up.shape[1])
    ffn_hidden_size = cfg.moe_ffn_hidden_size or int(gate_up.shape[0]) // 2
    # Any family with token modalities: its model section is read for the two initialisation scales it may have.
    model_section = getattr(config, "model", None)
    init_std = getattr(model_section, "init_std", 0.02)
    num_layers = getattr(model_section, "num_layers", 1)
    return ModalityExperts(
        hidden_size,
        ffn_hidden_size,
        list(cfg.num_experts),
        routing=cfg.routing,
        capacity_factor=cfg.capacity_factor,
        top_k=cfg.router_topk,
        load_balancing_coeff=cfg.load_balancing_coeff,
        inference_routing=cfg.inference_routing,
        init_std=init_std,
        out_init_std=init_std / math.sqrt(2.0 * num_layers),  # as the dense FFN's projection into the residual stream
    )


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.modality_experts.report import ModalityExpertsReport

    register(ModalityExpertsReport())
