"""What ``modality_experts`` did in a run, in numbers for the run summary (``plugin_figures.modality_experts``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from jevons.framework.attribution import Figure
from jevons.plugins.modality_experts.layer import ModalityExperts


class ModalityExpertsReport(pl.Callback):
    """Expert layers and parameters, expert assignments per routed token (training and inference), expert utilisation."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[ModalityExperts] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.layers = [m for m in pl_module.modules() if isinstance(m, ModalityExperts)]

    def report(self) -> dict[str, Figure]:
        return expert_figures(self.layers)


def expert_figures(layers: list[ModalityExperts]) -> dict[str, Figure]:
    """Figures summed over ``layers``; utilisation is each expert's share of its group's assignments,
    as min and max over the group's mean, worst layer first."""
    if not layers:
        return {"expert_layers": 0}
    counts = torch.stack([layer.counts for layer in layers]).sum(0).tolist()
    figures: dict[str, Figure] = {
        "expert_layers": len(layers),
        "experts_per_layer": sum(layers[0].experts_per_group),
        "expert_params": int(sum(p.numel() for layer in layers for p in (layer.gate, layer.up, layer.down))),
        "assignments_per_token_train": round(counts[1] / counts[0], 4) if counts[0] else 0.0,
        "assignments_per_token_inference": round(counts[3] / counts[2], 4) if counts[2] else 0.0,
    }
    for group, experts in enumerate(layers[0].experts_per_group):
        offset = layers[0].offsets[group]
        loads = torch.stack([layer.expert_load[offset : offset + experts] for layer in layers]).double()  # (L, E)
        if loads.sum() == 0:
            continue
        share = loads / loads.mean(dim=1, keepdim=True).clamp(min=1e-9)
        name = layers[0].group_names[group]
        figures[f"{name}_expert_load_min_over_mean"] = round(float(share.min()), 4)
        figures[f"{name}_expert_load_max_over_mean"] = round(float(share.max()), 4)
    return figures
