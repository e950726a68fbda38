"""Autoregressive text generation for the llm family: temperature and top-k sampling.

No KV cache: the tiny recipes generate a few dozen tokens per validation, and
recomputing the prefix keeps one code path for every tensor-parallel size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from jevons.recipes.llm.chat_template import ChatTemplate
    from jevons.recipes.llm.model import DecoderLM


class TextGenerator:
    """``generator(prompts)`` returns each prompt followed by its continuation.

    With a ``chat_template`` (a model fine-tuned on ``jevons data import chat`` data), each prompt is a user
    message, rendered with the generation prompt and tokenised as ``apply_chat_template`` does (no special
    tokens added); the output keeps the template's special tokens, so turns stay visible.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        stop_ids: Sequence[int] = (),
        chat_template: ChatTemplate | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        """End-of-sequence ids (a checkpoint's generation_config.json may list several): generation stops there."""
        self.chat_template = chat_template

    def encode(self, prompt: str) -> list[int]:
        if self.chat_template is None:
            return list(self.tokenizer.encode(prompt).ids)
        text = self.chat_template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int = 40,
        seed: int = 0,
    ) -> list[str]:
        from jevons.framework.tensor_parallel import gather_last_dim

        vocab = self.tokenizer.get_vocab_size()
        max_len = cast("DecoderLM", self.model).shape.max_seq_len
        rng = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([self.encode(prompt) or [0]], device=device)  # (1, T)
            for _ in range(max_new_tokens):
                logits = self.model(ids[:, -max_len:])[:, -1]  # (1, V / tp)
                logits = gather_last_dim(logits)[:, :vocab].float().cpu()  # (1, V)
                if temperature <= 0:
                    next_id = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k:
                        kth = torch.topk(logits, min(top_k, vocab)).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng)
                ids = torch.cat([ids, next_id.to(device)], dim=1)
                if int(next_id) in self.stop_ids:
                    break
            outputs.append(self.tokenizer.decode(ids[0].tolist(), skip_special_tokens=self.chat_template is None))
        return outputs
