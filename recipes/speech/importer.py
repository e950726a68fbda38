"""``jevons data import audio``: transcribed audio to the speech family's utterance shards.

Inputs are NeMo manifests (JSON lines of ``audio_filepath``, ``text``, optional ``duration``
and ``offset``, paths relative to the manifest) or folders of audio files (wav, flac, ogg,
mp3 as libsndfile reads them) with sidecar ``name.txt`` transcripts. Audio is decoded with
soundfile, mixed to mono and resampled to 16 kHz with ``scipy.signal.resample_poly``;
utterances outside ``min_seconds``..``max_seconds`` are skipped and counted. Transcripts are
normalised as the family's character vocabulary requires (lower case, letters, apostrophes;
:func:`jevons.recipes.speech.text.normalize`); the characters found are stored in
``meta.json`` (``vocabulary``). A sample holds ``wav`` (16-bit PCM), ``txt`` and ``json``
(its source); its lengths are the two the family batches by: 10 ms feature frames and
transcript characters plus ``</s>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record, Skipped
from jevons.framework.data.importing.captioned import media_bytes, media_records

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


@dataclass
class AudioImportOptions(ImportOptions):
    min_seconds: float = 0.5
    """Shorter utterances are skipped as too short."""
    max_seconds: float = 20.0
    """Longer utterances are skipped as too long (attention over more is costly; NeMo's recipes cap near 20 s)."""
    text_field: str | None = None
    """The manifest field holding transcripts; null finds text, transcript, caption."""
    path_field: str | None = None
    """The manifest field holding audio paths; null finds audio_filepath, path, file_name..."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.min_seconds >= 0, "min_seconds", self.min_seconds, "0 or more")
        require(self.max_seconds > self.min_seconds, "max_seconds", self.max_seconds, "more than min_seconds")


class AudioImporter(Importer[AudioImportOptions]):
    """Transcribed audio to 16 kHz utterances (see the module docstring)."""

    kind = "audio"
    family = "speech"
    description = "transcribed audio (NeMo manifest, or wav/flac with sidecar .txt), resampled to 16 kHz mono"
    options_class: ClassVar[type[ImportOptions]] = AudioImportOptions
    length_names = ("frames", "tokens")

    def input_bytes(self, inputs: Sequence[Path]) -> int:
        return media_bytes(inputs, AUDIO_SUFFIXES, self.options.path_field)

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        return media_records(
            inputs, AUDIO_SUFFIXES, caption_field=self.options.text_field, path_field=self.options.path_field
        )

    def convert(self, record: Record) -> list[Converted]:
        from jevons.framework.data.media.audio import SAMPLE_RATE, load_mono, probe_seconds
        from jevons.recipes.speech.data import wav_bytes
        from jevons.recipes.speech.features import num_frames
        from jevons.recipes.speech.text import normalize

        payload = record.payload
        text = normalize(payload["caption"])
        if not text:
            raise Skipped("empty text", f"transcript {payload['caption']!r} has no letters")
        path = Path(payload["path"])
        seconds = payload["duration"]  # a MediaError here or below is the record's skip (the engine counts it)
        if seconds is None:  # from the header: nothing is decoded for an utterance the filters drop
            seconds = probe_seconds(path) - payload["offset"]
        self._check_duration(seconds)
        audio = load_mono(path, SAMPLE_RATE, payload["offset"], payload["duration"])
        self._check_duration(len(audio) / SAMPLE_RATE)
        fields = {
            "wav": wav_bytes(audio),
            "txt": text,
            "json": {"source": record.source, "offset": payload["offset"], "seconds": len(audio) / SAMPLE_RATE},
        }
        return [Converted(fields, [num_frames(len(audio)), len(text) + 1])]  # + 1: the </s> the decoder predicts

    def _check_duration(self, seconds: float) -> None:
        if seconds < self.options.min_seconds:
            raise Skipped("too short", f"{seconds:.2f} s, min_seconds={self.options.min_seconds}")
        if seconds > self.options.max_seconds:
            raise Skipped("too long", f"{seconds:.2f} s, max_seconds={self.options.max_seconds}")

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        stats["characters"] = "".join(sorted(set(stats.get("characters", "")) | set(sample.fields["txt"])))
        stats["seconds"] = stats.get("seconds", 0.0) + sample.fields["json"]["seconds"]

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from jevons.framework.data.media.audio import SAMPLE_RATE

        characters = sorted({c for stats in chunk_stats for c in stats.get("characters", "")})
        return {
            "sample_rate": SAMPLE_RATE,
            "seconds": [self.options.min_seconds, self.options.max_seconds],
            "total_seconds": round(sum(s.get("seconds", 0.0) for s in chunk_stats), 3),
            "vocabulary": "".join(characters),
        }
