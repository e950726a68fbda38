"""The speech family's data: espeak-ng speech of CPython's prose, in indexed shards, read as log-mel features.

``speech`` (``jevons data speech``) takes the sentences of the
llm family's corpus (CPython's documentation topics and docstrings) that are
3 to 10 words of plain letters, holds out every tenth (sorted) for
validation, and speaks each once with a voice drawn from 7 English accents x
12 variants, a rate of 130-210 words per minute and a pitch of 30-70, seeded
by the sentence so a rebuild is identical. Utterances outside 1-4 s are
dropped and counted in ``meta.json``. Each sample holds the 16 kHz audio
(``wav``), the normalised transcript (``txt``) and the voice (``json``); the
index holds its lengths: feature frames (10 ms) and transcript characters.

Features are computed when a sample is read (in DataLoader workers): 80
log-mel energies every 10 ms (:mod:`jevons.recipes.speech.features`),
normalised per utterance and per mel bin.
"""

from __future__ import annotations

import io
import json
import random
import re
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.data.reader import Corrupt, ShardBackedDataset, ShardDataset, open_split
from jevons.framework.data.shards import write_shards
from jevons.framework.family import DataSource
from jevons.recipes.speech import text as vocab
from jevons.recipes.speech.features import SAMPLE_RATE, num_frames
from jevons.recipes.speech.synth import ACCENTS, VARIANTS, Voice, espeak_binary, synthesize

MIN_SECONDS, MAX_SECONDS = 1.0, 4.0
MIN_WORDS, MAX_WORDS = 3, 10


def sentences() -> dict[str, list[str]]:
    """Normalised sentences of 3-10 plain words from the llm corpus, split ``train``/``val`` (every tenth)."""
    from jevons.recipes.llm.data import _documents

    found = set()
    for _, document in _documents():
        for piece in re.split(r"(?<=[.!?])\s+|\n\s*\n", document):
            sentence = " ".join(piece.split()).rstrip(".!?")
            if not re.fullmatch(r"[A-Za-z',;\- ]+", sentence):
                continue  # code, numbers, markup: not speakable as written
            normalised = vocab.normalize(sentence)
            if MIN_WORDS <= len(normalised.split()) <= MAX_WORDS:
                found.add(normalised)
    ordered = sorted(found)
    return {"train": [s for i, s in enumerate(ordered) if i % 10], "val": ordered[::10]}


def voice_for(sentence: str) -> Voice:
    """A voice chosen from the sentence's text, so rebuilding gives the same corpus."""
    rng = random.Random(sentence)
    return Voice(rng.choice(ACCENTS), rng.choice(VARIANTS), rng.randint(130, 210), rng.randint(30, 70))


def wav_bytes(waveform: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(SAMPLE_RATE)
        # Clipped first: resampling overshoots full-scale input, and a wrapped int16 is a click.
        audio.writeframes((np.clip(waveform, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
    return buffer.getvalue()


def build_speech(
    directory: Path, progress: bool, max_sentences: dict[str, int] | None = None, workers: int = 2
) -> None:
    """Synthesise ``train``/``val`` shards and ``meta.json`` into ``directory``.

    ``max_sentences`` takes the first that many sentences of a split (tests build a small corpus this way).
    """
    from tqdm import tqdm

    binary = espeak_binary()
    splits = sentences()
    if max_sentences is not None:
        splits = {split: items[: max_sentences.get(split, len(items))] for split, items in splits.items()}
    meta: dict[str, Any] = {"sample_rate": SAMPLE_RATE, "seconds": [MIN_SECONDS, MAX_SECONDS], "splits": {}}
    bar = tqdm(total=sum(len(v) for v in splits.values()), desc="speech", unit="utterance", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # each synthesis is its own espeak-ng process
        for split, items in splits.items():
            stats = {"sentences": len(items), "utterances": 0, "dropped_out_of_range": 0, "seconds": 0.0}

            def spoken(items: list[str] = items) -> Iterator[tuple[str, Voice, np.ndarray]]:
                voices = [voice_for(s) for s in items]
                for sentence, voice, waveform in zip(
                    items, voices, pool.map(lambda text, voice: synthesize(text, voice, binary), items, voices)
                ):
                    bar.update()
                    yield sentence, voice, waveform

            def samples(
                stats: dict[str, Any] = stats, split: str = split
            ) -> Iterator[tuple[dict[str, Any], list[int]]]:
                for number, (sentence, voice, waveform) in enumerate(spoken()):
                    seconds = len(waveform) / SAMPLE_RATE
                    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
                        stats["dropped_out_of_range"] += 1
                        continue
                    stats["utterances"] += 1
                    stats["seconds"] += seconds
                    fields = {
                        "__key__": f"{split}{number:06d}",
                        "wav": wav_bytes(waveform),
                        "txt": sentence,
                        "json": {"voice": voice.name, "words_per_minute": voice.words_per_minute, "pitch": voice.pitch},
                    }
                    yield fields, [num_frames(len(waveform)), len(sentence) + 1]  # + 1: the </s> the decoder predicts

            write_shards(
                samples(),
                directory,
                split,
                length_names=["frames", "tokens"],
                name=f"speech/{split}",
                max_samples_per_shard=500,
            )
            meta["splits"][split] = stats
    bar.close()
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))


SPEECH_SOURCE = DataSource(
    name="speech",
    description="CPython's prose spoken by espeak-ng: 84 voices, 1-4 s utterances at 16 kHz",
    build=build_speech,
    version=1,
)


def _decode(sample: dict[str, Any]) -> dict[str, Any]:
    with wave.open(io.BytesIO(sample["wav"])) as audio:
        if audio.getframerate() != SAMPLE_RATE or audio.getsampwidth() != 2 or audio.getnchannels() != 1:
            raise ValueError(
                f"expected 16 kHz 16-bit mono audio, got {audio.getframerate()} Hz, "
                f"{8 * audio.getsampwidth()}-bit, {audio.getnchannels()} channel(s)"
            )
        raw = audio.readframes(audio.getnframes())
    transcript = sample["txt"].decode("utf-8")
    return {"audio": np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, "text": transcript}


class Utterances(ShardBackedDataset):
    """Map-style ``{"features": (frames, mels), "tokens": (chars,), "text": str}`` samples of a split.

    ``lengths`` is ``(N, 2)``: feature frames and transcript characters plus ``</s>``, the two
    lengths a 2-D bucketing sampler bounds.
    """

    def __init__(self, samples: ShardDataset, num_mels: int) -> None:
        super().__init__(samples)
        self.num_mels = num_mels

    @classmethod
    def from_folder(cls, folder: Path, split: str, data_config: Any) -> Utterances:
        return cls(open_split(folder, split, _decode, data_config), data_config.num_mels)

    def __getitem__(self, i: int) -> Any:
        import torch

        from jevons.recipes.speech.features import log_mel

        sample = self.samples[i]
        if isinstance(sample, Corrupt):
            return sample
        features = log_mel(torch.from_numpy(sample["audio"]), self.num_mels)
        features = (features - features.mean(0)) / (features.std(0) + 1e-5)
        return {
            "features": features,
            "tokens": np.asarray(vocab.encode(sample["text"]), dtype=np.int64),
            "text": sample["text"],
        }

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded batch: ``features`` (B, T, mels) + ``feature_lengths``; ``decoder_input``
        (``<s>`` y), ``targets`` (y ``</s>``) and ``target_mask``, each (B, L+1); ``tokens`` (B, L) +
        ``token_lengths`` for CTC; ``texts``."""
        import torch

        batch = len(samples)
        frames = torch.tensor([len(s["features"]) for s in samples])
        chars = torch.tensor([len(s["tokens"]) for s in samples])
        features = torch.zeros(batch, int(frames.max()), samples[0]["features"].shape[1])
        tokens = torch.zeros(batch, int(chars.max()), dtype=torch.long)
        decoder_input = torch.zeros(batch, int(chars.max()) + 1, dtype=torch.long)
        targets = torch.zeros_like(decoder_input)
        for row, sample in enumerate(samples):
            n = len(sample["tokens"])
            ids = torch.from_numpy(sample["tokens"])
            features[row, : len(sample["features"])] = sample["features"]
            tokens[row, :n] = ids
            decoder_input[row, 0] = vocab.BOS
            decoder_input[row, 1 : n + 1] = ids
            targets[row, :n] = ids
            targets[row, n] = vocab.EOS
        target_mask = torch.arange(decoder_input.shape[1])[None, :] <= chars[:, None]
        return {
            "features": features,
            "feature_lengths": frames,
            "tokens": tokens,
            "token_lengths": chars,
            "decoder_input": decoder_input,
            "targets": targets,
            "target_mask": target_mask.float(),
            "texts": [s["text"] for s in samples],
        }
