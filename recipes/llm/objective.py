"""Next-token prediction: mean cross-entropy over real (unpadded) target tokens.

The logits stay vocab-sharded across tensor-parallel ranks; Megatron's
``vocab_parallel_cross_entropy`` computes the softmax over the full
vocabulary without gathering them (Shoeybi et al., 2019).
"""

from __future__ import annotations

from typing import Any

import torch

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.framework.tensor_parallel import vocab_parallel_cross_entropy


class NextTokenObjective(Objective):
    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        logits = model(batch["input_ids"])  # (B, T, V / tp)
        per_token = vocab_parallel_cross_entropy(logits.float(), batch["targets"])  # (B, T)
        mask = batch["loss_mask"]
        tokens = mask.sum()
        return ObjectiveOutput(loss=(per_token * mask).sum() / tokens.clamp(min=1), weight=int(tokens.item()))
