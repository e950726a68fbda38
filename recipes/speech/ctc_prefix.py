"""CTC prefix scores for joint CTC/attention beam search (Watanabe et al., 2017, Algorithm 2).

The attention decoder alone can loop ("conconconces") or stop early: nothing
ties its output to the audio's length. The CTC prefix score of a prefix ``h``
is the log-probability that the CTC head's output *starts with* ``h``, summed
over every alignment; adding it to the decoder's score keeps hypotheses that
the frames support. Forward variables ``r[t] = (r_nonblank, r_blank)`` of each
prefix are carried along the beam, so extending a prefix by every character
costs one pass over the frames.
"""

from __future__ import annotations

import torch

from jevons.recipes.speech import text as vocab

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Scores every one-character extension of a set of prefixes, for one utterance.

    :param log_probs: ``(T, vocab)`` CTC log-probabilities of the utterance's real frames.
    """

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.x = log_probs
        self.frames, self.vocab = log_probs.shape

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """State of the empty prefix: forward variables ``(1, T, 2)`` and its prefix score ``(1,)``."""
        r = torch.full((1, self.frames, 2), NEG_INF, dtype=self.x.dtype, device=self.x.device)
        r[0, :, 1] = torch.cumsum(self.x[:, vocab.BLANK], dim=0)  # all blanks so far
        return r, torch.zeros(1, dtype=self.x.dtype, device=self.x.device)

    def extend(self, r: torch.Tensor, last: torch.Tensor, empty: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores ``(B, vocab)`` of each prefix extended by each character, and their states
        ``(B, vocab, T, 2)``. ``last`` holds each prefix's last character; ``empty``: the prefixes are ``<s>``.
        The score of ``</s>`` is the probability of the whole prefix (CTC ends there)."""
        beams, frames, x = r.shape[0], self.frames, self.x
        total = torch.logaddexp(r[..., 0], r[..., 1])  # (B, T)
        # A repeated character needs a blank between the two: only blank-ending paths may continue.
        repeat = torch.arange(self.vocab, device=x.device)[None, :] == last[:, None]  # (B, V)
        phi = torch.where(repeat[:, :, None], r[:, None, :, 1], total[:, None, :])  # (B, V, T)
        r_nonblank = torch.full((beams, self.vocab, frames), NEG_INF, dtype=x.dtype, device=x.device)
        r_blank = torch.full_like(r_nonblank, NEG_INF)
        if empty:
            r_nonblank[:, :, 0] = x[0]
        score = r_nonblank[:, :, 0].clone()
        for t in range(1, frames):
            r_nonblank[:, :, t] = torch.logaddexp(r_nonblank[:, :, t - 1], phi[:, :, t - 1]) + x[t]
            r_blank[:, :, t] = torch.logaddexp(r_blank[:, :, t - 1], r_nonblank[:, :, t - 1]) + x[t, vocab.BLANK]
            score = torch.logaddexp(score, phi[:, :, t - 1] + x[t])
        score[:, vocab.EOS] = total[:, -1]
        score[:, vocab.BLANK] = score[:, vocab.BOS] = NEG_INF
        return score, torch.stack([r_nonblank, r_blank], dim=-1)
