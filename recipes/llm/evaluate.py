"""What each llm validation adds: perplexity, the ratio to unigram entropy, and text samples."""

from __future__ import annotations

import math
from pathlib import Path

from jevons.framework.family import EvalContext
from jevons.recipes.llm.data import unigram_entropy


def evaluate(context: EvalContext, data_dir: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    loss = context.metrics.get("val/loss")
    if loss is not None:
        metrics["val/perplexity"] = math.exp(min(loss, 50.0))
        entropy = unigram_entropy(data_dir)
        if entropy:
            metrics["val/unigram_entropy"] = entropy
            metrics["val/loss_over_unigram_entropy"] = loss / entropy

    cfg = context.config.generate
    texts = context.generator(
        cfg.prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, seed=context.step
    )
    if context.is_rank_zero:
        folder = context.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{context.step:08d}.txt"
        path.write_text("\n\n---\n\n".join(texts) + "\n")
        context.artifacts.append(path)
        if context.tensorboard is not None:
            context.tensorboard.add_text("samples", "\n\n---\n\n".join(texts), context.step)
    return metrics
