"""Next-token prediction over mixed text and image tokens, with the loss split by modality.

The loss is the mean cross-entropy over every real target token, whatever its
modality, plus the auxiliary losses modules put in the forward context while
training (a router's load balancing, say). Per modality (of the *target*
token) it logs, in training, the mean loss (``train/loss_text``,
``train/loss_image``); for validation it logs each modality's summed loss and
token count as shares of all tokens (``nll_<m>_share``, ``<m>_fraction``),
whose dataset means divide exactly into the per-modality loss
(``val/loss_<m>``, computed in :mod:`.evaluate`): a mean of per-batch
modality means would weight batches wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.framework.tensor_parallel import vocab_parallel_cross_entropy

if TYPE_CHECKING:
    from jevons.recipes.mixed_modal.model import MixedModalDecoder


class MixedModalObjective(Objective):
    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        decoder = cast("MixedModalDecoder", model)
        context = decoder.context_for(batch["input_ids"], batch["real"])
        logits = model(batch["input_ids"], context)  # (B, T, V / tp)
        per_token = vocab_parallel_cross_entropy(logits.float(), batch["targets"])  # (B, T)
        mask = batch["loss_mask"]
        tokens = mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / tokens
        metrics: dict[str, torch.Tensor] = {}
        for modality_id, name in enumerate(decoder.modalities):
            selected = mask * (batch["target_modality"] == modality_id)
            count = selected.sum()
            nll = (per_token.detach() * selected).sum()
            metrics[f"nll_{name}_share"] = nll / tokens
            metrics[f"{name}_fraction"] = count / tokens
            if model.training:
                metrics[f"loss_{name}"] = nll / count.clamp(min=1)
        if model.training and context.aux_losses:
            metrics["lm_loss"] = loss.detach()
            for name, value in context.aux_losses.items():
                metrics[name] = value.detach()
            loss = loss + sum(context.aux_losses.values())
        metrics.update({name: torch.stack(values).mean() for name, values in context.stats.items()})
        return ObjectiveOutput(loss=loss, weight=int(tokens.item()), metrics=metrics)
