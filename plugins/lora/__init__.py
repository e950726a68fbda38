"""``lora``: fine-tune low-rank adapters on a frozen model (Hu et al., 2021, "LoRA: Low-Rank Adaptation
of Large Language Models").

Each adapted linear ``W`` becomes ``W x + (alpha / r) B A x`` with ``A`` (r x in)
and ``B`` (out x r) trained and ``W`` frozen; ``B`` starts at zero, so training
starts from the base model exactly. Seed: Video-BLADE distils Wan2.1 with LoRA
rank 64; FastVideo, finetrainers, DiffSynth, NeMo and LitGPT all fine-tune this
way.

The adapters are peft's (``inject_adapter_in_model``): diffusers' Wan linears
get peft's own ``lora.Linear``; Jevons' Megatron tensor-parallel linears (every
llm and mixed_modal linear, the diffusion transformer's at TP > 1) get the
tensor-parallel LoRA layers of :mod:`.layers`, registered through peft's
custom-layer API. Everything else in the model is frozen: only adapters train,
and checkpoints hold the adapters and their optimizer state, plus the SHA-256
of the frozen base, which a resume checks (:mod:`jevons.framework.checkpoint`).

``lora.targets`` names the adapted modules by name suffix; null takes the
family's attention projections and FFN (:data:`.inject.FAMILY_TARGETS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jevons.framework.config.schema import Config, section
from jevons.framework.errors import UsageError
from jevons.framework.plugin import PluginInfo, hookimpl

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch


@dataclass
class LoRAConfig:
    rank: int = 16
    """r, the adapters' inner dimension."""
    alpha: int | None = None
    """The update is scaled by ``alpha / rank``; null: ``alpha = rank`` (scale 1)."""
    dropout: float = 0.0
    """Dropout on the adapters' input (peft's ``lora_dropout``)."""
    targets: list[str] = field(default_factory=list)
    """Module-name suffixes to adapt (``to_q``, ``attn.proj``); empty: the family's defaults."""
    init_from: str | None = None
    """Start from this adapter instead of ``B = 0``: what ``jevons export adapter=true`` writes (llm: a peft
    adapter folder; diffusion: diffusers' ``pytorch_lora_weights.safetensors``), from Jevons or another tool."""


PLUGIN_INFO = PluginInfo(
    description="LoRA adapters (peft) on a frozen model: attention projections and FFN by default",
    config=LoRAConfig,
)


@hookimpl
def configure(config: Config) -> None:
    from jevons.plugins.lora.inject import default_targets

    cfg = section(config, "lora", LoRAConfig)
    if cfg.rank < 1:
        raise UsageError(f"lora.rank={cfg.rank} must be a positive integer (16 or 64 are common).")
    if cfg.alpha is not None and cfg.alpha <= 0:
        raise UsageError(f"lora.alpha={cfg.alpha} must be positive (or null for alpha = rank).")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UsageError(f"lora.dropout={cfg.dropout} must be in [0, 1).")
    if not cfg.targets:
        default_targets(config.family)  # a family without defaults is refused here, not at build


@hookimpl
def modify_model(model: torch.nn.Module, config: Config) -> None:
    from jevons.plugins.lora.inject import adapter_parameters, add_adapters, default_targets

    cfg = section(config, "lora", LoRAConfig)
    targets = cfg.targets or list(default_targets(config.family))
    adapted = add_adapters(model, targets, cfg.rank, cfg.alpha or cfg.rank, cfg.dropout, config.seed)
    if cfg.init_from:
        from pathlib import Path

        from jevons.plugins.lora.init_from import load_adapter, read_adapter

        load_adapter(model, read_adapter(config.family, model, Path(cfg.init_from)), Path(cfg.init_from))
    trained = sum(p.numel() for p in adapter_parameters(model).values())
    total = sum(p.numel() for p in model.parameters())
    print(
        f"lora: rank {cfg.rank} adapters on {len(adapted)} modules ({', '.join(targets)}): "
        f"{trained:,} trained parameters of {total:,} ({100 * trained / total:.2f}%)",
        flush=True,
    )


@hookimpl
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    from jevons.plugins.lora.report import LoRAReport

    register(LoRAReport())
