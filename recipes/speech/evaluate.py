"""What each speech validation adds: character and word error rates, inverse real-time factors, and transcripts
beside their references.

RTFx (the Open ASR Leaderboard's speed figure, Srivastav et al., 2025) is seconds of audio transcribed per
second of compute: the audio of the validation utterances over the wall time of decoding them (encoder and
decoder, ``decode.batch_size`` at a time; features are computed before the clock starts), per method."""

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


def audio_seconds(samples: list[dict[str, Any]]) -> float:
    """Seconds of audio behind ``samples``' features (one frame per 10 ms hop, centred windows)."""
    from jevons.recipes.speech.features import HOP, SAMPLE_RATE

    return sum((len(s["features"]) - 1) * HOP / SAMPLE_RATE for s in samples)


def transcribe(
    generator: Any, collate: Any, samples: list[dict[str, Any]], batch_size: int, method: str, beam_size: int = 4
) -> tuple[list[str], list[str], float]:
    """References and hypotheses of ``samples``, decoded ``batch_size`` at a time with ``method``, and the
    seconds the decoding took (batches moved to the device beforehand; CUDA synchronised)."""
    import time

    device = next(generator.model.parameters()).device
    batches = [collate(samples[start : start + batch_size]) for start in range(0, len(samples), batch_size)]
    inputs = [(b["features"].to(device), b["feature_lengths"].to(device)) for b in batches]
    references = [text for batch in batches for text in batch["texts"]]
    hypotheses: list[str] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for features, lengths in inputs:
        hypotheses += generator(features, lengths, method=method, beam_size=beam_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return references, hypotheses, time.perf_counter() - started


def evaluate(context: EvalContext, dataset: Any) -> dict[str, float]:
    cfg = context.config.decode
    metrics: dict[str, float] = {}
    written: list[str] = []
    samples = readable(dataset, cfg.eval_utterances)
    audio = audio_seconds(samples)
    with torch.no_grad():
        for method in cfg.eval_methods:
            references, hypotheses, seconds = transcribe(
                context.generator, dataset.collate, samples, cfg.batch_size, method, cfg.beam_size
            )
            rates = error_rates(references, hypotheses)
            metrics.update({f"val/{name}_{method}": value for name, value in rates.items()})
            metrics[f"val/rtfx_{method}"] = audio / max(seconds, 1e-9)
            written += [
                f"## {method}: CER {rates['cer']:.3f}, WER {rates['wer']:.3f}, RTFx {metrics[f'val/rtfx_{method}']:.1f} "
                f"({audio:.1f} s of audio in {seconds:.2f} s, batch {cfg.batch_size}) over {len(references)} utterances"
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
