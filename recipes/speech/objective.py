"""Hybrid CTC/attention training (Watanabe et al., 2017): label-smoothed cross-entropy on the decoder plus CTC.

``loss = (1 - ctc_weight) * attention + ctc_weight * ctc``; both terms are
means over the batch's real target characters (CTC summed over utterances,
then divided by the same count), so ``weight`` — the characters, ``</s>``
included — is what the loss averages over, as the framework's data-parallel
rescaling expects. CTC aligns monotonically and speeds up the attention
decoder's learning of alignments; label smoothing (Szegedy et al., 2016)
keeps the decoder from over-confident characters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.recipes.speech import text as vocab


class HybridCTCAttentionObjective(Objective):
    def __init__(self, ctc_weight: float = 0.3, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.ctc_weight, self.label_smoothing = ctc_weight, label_smoothing

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        logits, ctc_logits, encoder_lengths = model(batch["features"], batch["feature_lengths"], batch["decoder_input"])
        mask = batch["target_mask"]
        characters = mask.sum().clamp(min=1)
        per_token = F.cross_entropy(
            logits.float().transpose(1, 2), batch["targets"], label_smoothing=self.label_smoothing, reduction="none"
        )
        attention = (per_token * mask).sum() / characters
        log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # (T, B, vocab)
        ctc = (
            F.ctc_loss(
                log_probs,
                batch["tokens"],
                encoder_lengths,
                batch["token_lengths"],
                blank=vocab.BLANK,
                reduction="sum",
                zero_infinity=True,
            )
            / characters
        )
        loss = (1.0 - self.ctc_weight) * attention + self.ctc_weight * ctc
        return ObjectiveOutput(
            loss=loss,
            weight=int(characters.item()),
            metrics={"attention_loss": attention.detach(), "ctc_loss": ctc.detach()},
        )
