"""Transcribing speech: greedy decoding of the attention decoder, joint CTC/attention beam search, greedy CTC.

The decoder is re-run on the whole prefix at each step (no key/value cache):
transcripts here are under 80 characters and the decoder has two layers, so
the cache would save little and cost a second code path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch

from jevons.recipes.speech import text as vocab
from jevons.recipes.speech.ctc_prefix import CTCPrefixScorer

if TYPE_CHECKING:
    from jevons.recipes.speech.model import SpeechRecognizer

Method = Literal["greedy", "beam", "ctc"]


class Transcriber:
    """The speech family's generator: ``transcriber(features, feature_lengths, method=...)`` -> texts."""

    def __init__(
        self, model: torch.nn.Module, beam_size: int = 4, ctc_weight: float = 0.3, length_penalty: float = 0.0
    ) -> None:
        self.model = model
        self.beam_size = beam_size
        self.ctc_weight = ctc_weight
        """Share of the CTC prefix score in beam search (joint CTC/attention decoding); 0: attention only."""
        self.length_penalty = length_penalty
        """Finished hypotheses are ranked by score / length ** length_penalty (0: no normalisation)."""

    @property
    def recognizer(self) -> SpeechRecognizer:
        """``model``, typed: the speech family's recogniser."""
        return cast("SpeechRecognizer", self.model)

    @torch.no_grad()
    def __call__(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        method: Method = "greedy",
        beam_size: int | None = None,
    ) -> list[str]:
        was_training = self.model.training
        self.model.eval()
        try:
            memory, lengths = self.recognizer.encode(features, feature_lengths)
            if method == "ctc":
                return self._ctc_greedy(memory, lengths)
            if method == "greedy":
                return self._greedy(memory, lengths)
            if method == "beam":
                return [
                    self._beam(memory[i : i + 1, : lengths[i]], lengths[i : i + 1], beam_size or self.beam_size)
                    for i in range(len(memory))
                ]
            raise ValueError(f"Unknown decoding method {method!r}; expected greedy, beam or ctc.")
        finally:
            self.model.train(was_training)

    @staticmethod
    def max_length(encoder_lengths: torch.Tensor) -> int:
        # CTC training already assumes at most one character per encoder frame.
        return int(encoder_lengths.max()) + 1

    def _greedy(self, memory: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        batch = len(memory)
        prefix = torch.full((batch, 1), vocab.BOS, dtype=torch.long, device=memory.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        for _ in range(self.max_length(lengths)):
            next_ids = self.recognizer.decode(prefix, memory, lengths)[:, -1].argmax(-1)
            next_ids = torch.where(finished, torch.full_like(next_ids, vocab.EOS), next_ids)
            prefix = torch.cat([prefix, next_ids[:, None]], dim=1)
            finished |= next_ids == vocab.EOS
            if finished.all():
                break
        return [vocab.decode(row[1:].tolist()) for row in prefix]

    def _beam(self, memory: torch.Tensor, lengths: torch.Tensor, beam_size: int) -> str:
        """One utterance: keep the ``beam_size`` best prefixes, batched through the decoder together.

        A prefix's score is ``(1 - ctc_weight) * attention + ctc_weight * CTC prefix`` log-probability.
        """
        device = memory.device
        alive = torch.full((1, 1), vocab.BOS, dtype=torch.long, device=device)
        scores = torch.zeros(1, device=device)
        weight = self.ctc_weight
        if weight > 0:
            ctc = CTCPrefixScorer(self.recognizer.ctc_head(memory)[0].float().log_softmax(-1))
            ctc_state, ctc_scores = ctc.initial()
        finished: list[tuple[float, list[int]]] = []
        for step in range(1, self.max_length(lengths) + 1):
            count = len(alive)
            log_probs = (
                self.recognizer.decode(alive, memory.expand(count, -1, -1), lengths.expand(count))[:, -1]
                .float()
                .log_softmax(-1)
            )
            log_probs[:, vocab.BLANK] = log_probs[:, vocab.BOS] = float("-inf")  # never emitted by the decoder
            step_scores = log_probs
            if weight > 0:
                extended, extended_state = ctc.extend(ctc_state, alive[:, -1], empty=step == 1)
                step_scores = (1 - weight) * log_probs + weight * (extended - ctc_scores[:, None])
            candidates = (scores[:, None] + step_scores).flatten()
            top_scores, top = candidates.topk(min(2 * beam_size, len(candidates)))
            keep: list[tuple[int, int, float]] = []
            for rank, (score, index) in enumerate(zip(top_scores.tolist(), top.tolist())):
                row, token = divmod(index, step_scores.shape[1])
                if score == float("-inf"):
                    break
                if token == vocab.EOS:
                    if rank < beam_size:  # as fairseq: an ending counts only among the beam_size best candidates
                        finished.append((score / step**self.length_penalty, alive[row, 1:].tolist()))
                elif len(keep) < beam_size:
                    keep.append((row, token, score))
            # As fairseq: stop once beam_size hypotheses have finished (or none is left to extend).
            if not keep or len(finished) >= beam_size:
                break
            rows = torch.tensor([r for r, _, _ in keep], device=device)
            tokens = torch.tensor([t for _, t, _ in keep], device=device)
            alive = torch.cat([alive[rows], tokens[:, None]], dim=1)
            scores = torch.tensor([s for _, _, s in keep], device=device)
            if weight > 0:
                ctc_state, ctc_scores = extended_state[rows, tokens], extended[rows, tokens]
        if not finished:
            finished = [(float(s) / len(a) ** self.length_penalty, a[1:].tolist()) for s, a in zip(scores, alive)]
        return vocab.decode(max(finished, key=lambda f: f[0])[1])

    def _ctc_greedy(self, memory: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        best = self.recognizer.ctc_head(memory).argmax(-1)
        texts = []
        for row, length in zip(best, lengths.tolist()):
            ids = torch.unique_consecutive(row[:length]).tolist()
            texts.append(vocab.decode([i for i in ids if i != vocab.BLANK]))
        return texts
