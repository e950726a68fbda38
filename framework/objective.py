"""The training objective: what ``make_objective`` and a family's default return.

An objective is an ``nn.Module`` so the auxiliary networks it may own (a
distillation fake-score network, say) are part of the trained module and its
checkpoints. It computes the loss from the model and a batch; it does not
step optimizers of the model, which ``make_optimizer`` covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ObjectiveOutput:
    """One batch's result.

    :param loss: the scalar to minimise (for validation, the batch's mean loss).
    :param weight: what ``loss`` is a mean over (real tokens, samples), so
        validation averages batches correctly and throughput counts real work.
    :param metrics: extra scalars logged as ``train/<name>`` or ``val/<name>``.
    """

    loss: torch.Tensor
    weight: int
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: override :meth:`forward`.

    Optional overrides: :meth:`dataset`, for an objective that makes its own
    training inputs (a data-free distillation objective reads noise seeds, not
    the family's data), and :meth:`checkpoint_state` / :meth:`load_checkpoint_state`
    for state outside its parameters (an auxiliary network's optimizer).
    """

    def forward(self, model: nn.Module, batch: Any) -> ObjectiveOutput:
        raise NotImplementedError

    def dataset(self, split: str) -> Any:
        """This objective's own map-style dataset for ``split`` (with ``lengths`` and ``collate``), or None
        for the family's. When it returns one, the family's dataset for that split is never built."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """State saved with each checkpoint beside the parameters: tensors, numbers, strings, lists, dicts."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned."""
