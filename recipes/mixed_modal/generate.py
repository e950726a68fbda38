"""Generation in both directions: images from captions, captions from images.

The sequence layout (:mod:`.tokens`) says which tokens may come next: after
``<image>`` exactly ``image_tokens`` image codes then ``</image>``; in a
caption, words or ``</s>``. Sampling masks every other id (as Chameleon's
decoding restricts to the modality being generated). No KV cache: prompts are
short and recomputing keeps one code path for every tensor-parallel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jevons.recipes.mixed_modal.data import decode_codes
from jevons.recipes.mixed_modal.tokens import BOI, BOS, EOI, EOS, Vocabulary


class MixedModalGenerator:
    def __init__(self, model: torch.nn.Module, vocabulary: Vocabulary, codebook: np.ndarray) -> None:
        self.model = model
        self.vocabulary = vocabulary
        self.codebook = codebook

    def _next(
        self, ids: torch.Tensor, allowed: torch.Tensor, temperature: float, top_k: int, rng: torch.Generator
    ) -> torch.Tensor:
        from jevons.framework.tensor_parallel import gather_last_dim

        logits = gather_last_dim(self.model(ids)[:, -1])[:, : self.vocabulary.size].float().cpu()  # (B, V)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, int(allowed.sum()))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng)

    @torch.no_grad()
    def images(
        self, captions: Sequence[str], per_caption: int = 1, temperature: float = 1.0, top_k: int = 0, seed: int = 0
    ) -> np.ndarray:
        """``(len(captions) * per_caption, 16, 16)`` images in [0, 1], caption by caption."""
        vocab, rng = self.vocabulary, torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        codes_allowed = torch.zeros(vocab.size, dtype=torch.bool)
        codes_allowed[vocab.first_code :] = True
        codes = []
        for text in captions:
            prompt = torch.tensor([[BOS, *vocab.encode_caption(text), BOI]] * per_caption, device=device)
            ids = prompt
            for _ in range(vocab.image_tokens):
                ids = torch.cat([ids, self._next(ids, codes_allowed, temperature, top_k, rng).to(device)], dim=1)
            codes.append((ids[:, prompt.shape[1] :] - vocab.first_code).cpu().numpy())
        return decode_codes(np.concatenate(codes), self.codebook)

    @torch.no_grad()
    def captions(
        self, codes: np.ndarray, max_words: int = 24, temperature: float = 0.0, top_k: int = 0, seed: int = 0
    ) -> list[str]:
        """A caption for each image given as ``(N, image_tokens)`` codes (greedy by default)."""
        vocab, rng = self.vocabulary, torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        words_allowed = torch.zeros(vocab.size, dtype=torch.bool)
        words_allowed[EOI + 1 : vocab.first_code] = True
        words_allowed[EOS] = True
        image = torch.as_tensor(np.asarray(codes), dtype=torch.long) + vocab.first_code
        bos, boi, eoi = (torch.full((len(image), 1), token) for token in (BOS, BOI, EOI))
        ids = torch.cat([bos, boi, image, eoi], dim=1).to(device)
        start = ids.shape[1]
        finished = torch.zeros(len(image), dtype=torch.bool)
        for _ in range(max_words):  # at most max_words words; an EOS ends a caption sooner
            next_ids = self._next(ids, words_allowed, temperature, top_k, rng)
            next_ids[finished] = EOS
            finished |= next_ids[:, 0] == EOS
            ids = torch.cat([ids, next_ids.to(device)], dim=1)
            if finished.all():
                break
        return [vocab.decode_caption(row[start:].tolist()) for row in ids.cpu()]
