"""Next-token prediction: mean cross-entropy over the target tokens the batch's ``loss_mask`` keeps
(real tokens; for instruction data, response tokens).

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
    """A packed batch's ``position_ids`` and ``segment_ids`` go to the model; a batch that counts its
    ``real_tokens`` (instruction data) reports the fraction of positions that are not padding."""

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        if "segment_ids" in batch:
            logits = model(batch["input_ids"], batch["position_ids"], batch["segment_ids"])  # (B, T, V / tp)
        else:
            logits = model(batch["input_ids"])
        per_token = vocab_parallel_cross_entropy(logits.float(), batch["targets"])  # (B, T)
        mask = batch["loss_mask"]
        tokens = mask.sum()
        metrics = {}
        if "real_tokens" in batch:
            metrics["real_token_fraction"] = batch["real_tokens"].float() / batch["input_ids"].numel()
        loss = (per_token * mask).sum() / tokens.clamp(min=1)
        return ObjectiveOutput(loss=loss, weight=int(tokens.item()), metrics=metrics)
