"""What each speech validation adds: character and word error rates, and transcripts beside their references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jevons.framework.family import EvalContext


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus CER and WER (jiwer: edit operations over all references' length)."""
    import jiwer

    # jiwer refuses an empty reference; every transcript in the corpus has 3 words or more.
    return {"cer": float(jiwer.cer(references, hypotheses)), "wer": float(jiwer.wer(references, hypotheses))}


def readable(dataset: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` utterances of ``dataset`` that decode (features computed once, for every method)."""
    from jevons.framework.data.reader import Corrupt

    return [s for s in (dataset[i] for i in range(min(count, len(dataset)))) if not isinstance(s, Corrupt)]


def transcribe(
    generator: Any, collate: Any, samples: list[dict[str, Any]], batch_size: int, method: str, beam_size: int = 4
) -> tuple[list[str], list[str]]:
    """References and hypotheses of ``samples``, decoded ``batch_size`` at a time with ``method``."""
    device = next(generator.model.parameters()).device
    references, hypotheses = [], []
    for start in range(0, len(samples), batch_size):
        batch = collate(samples[start : start + batch_size])
        hypotheses += generator(
            batch["features"].to(device), batch["feature_lengths"].to(device), method=method, beam_size=beam_size
        )
        references += batch["texts"]
    return references, hypotheses


def evaluate(context: EvalContext, dataset: Any) -> dict[str, float]:
    cfg = context.config.decode
    metrics: dict[str, float] = {}
    written: list[str] = []
    samples = readable(dataset, cfg.eval_utterances)
    with torch.no_grad():
        for method in cfg.eval_methods:
            references, hypotheses = transcribe(
                context.generator, dataset.collate, samples, cfg.batch_size, method, cfg.beam_size
            )
            rates = error_rates(references, hypotheses)
            metrics.update({f"val/{name}_{method}": value for name, value in rates.items()})
            written += [
                f"## {method}: CER {rates['cer']:.3f}, WER {rates['wer']:.3f} over {len(references)} utterances"
            ]
            written += [f"ref: {r}\nhyp: {h}\n" for r, h in list(zip(references, hypotheses))[: cfg.samples_written]]
    first = cfg.eval_methods[0]
    metrics["val/cer"], metrics["val/wer"] = metrics[f"val/cer_{first}"], metrics[f"val/wer_{first}"]
    if context.is_rank_zero:
        folder = Path(context.run_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{context.step:08d}.txt"
        path.write_text("\n".join(written) + "\n")
        context.artifacts.append(path)
        if context.tensorboard is not None:
            context.tensorboard.add_text("transcripts", "\n".join(written), context.step)
    return metrics
