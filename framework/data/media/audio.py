"""Audio files as training samples: mono float32 at one sample rate, read only where a sample lies.

Why it works this way:

* **libsndfile through soundfile.** It reads WAV, FLAC, Ogg/Vorbis, Opus and (from
  libsndfile 1.1) MP3 without spawning FFmpeg, and seeks by frame, so a segment
  of a long recording is read without decoding what comes before it
  (``SoundFile.seek`` then ``SoundFile.read``, the same as ``soundfile.read``'s
  ``start``/``stop``). :func:`probe_seconds` reads only the header
  (``soundfile.info``), so an import can plan segments for every file first.
* **Mono.** Speech models take one channel; channels are averaged (a
  downmix at equal gain), which keeps the level of a signal recorded the same
  on every channel and cannot clip.
* **One sample rate, resampled polyphase.** :func:`scipy.signal.resample_poly`
  upsamples by ``up``, low-pass filters (a Kaiser-windowed FIR) and downsamples
  by ``down``, with ``up / down`` the ratio of the rates reduced by their gcd
  (44100 -> 16000 is 160/441). Unlike FFT resampling (:func:`scipy.signal.resample`)
  it assumes no periodic signal, so a segment's ends do not bleed into each
  other, and its output length is ``ceil(n * up / down)``: one second of audio
  stays exactly ``sample_rate`` samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from jevons.framework.data.media import MediaError, require_file

__all__ = ["SAMPLE_RATE", "load_mono", "probe_seconds"]

SAMPLE_RATE = 16000
"""Samples per second that audio is resampled to unless told otherwise: what speech models take."""


def load_mono(
    path: Path, sample_rate: int = SAMPLE_RATE, offset: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """``duration`` seconds (to the end if None) of ``path`` from ``offset`` seconds, mono, at ``sample_rate``.

    Returns a 1-D float32 array. A ``duration`` reaching past the end returns what is there,
    as ``soundfile.read`` does. Raises :class:`MediaError` "missing file", "undecodable", or
    "too short" when ``offset`` is at or beyond the end of the file.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if offset < 0 or (duration is not None and duration < 0):
        raise ValueError(f"offset and duration cannot be negative, got offset={offset}, duration={duration}")
    path = Path(path)
    require_file(path)
    try:
        with soundfile.SoundFile(str(path)) as sound:
            source_rate = int(sound.samplerate)
            start = round(offset * source_rate)
            if start >= sound.frames:
                raise MediaError("too short", f"{path}: {sound.frames / source_rate:.2f} s, asked from {offset:.2f} s")
            count = -1 if duration is None else round(duration * source_rate)
            sound.seek(start)
            data = sound.read(frames=count, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:  # LibsndfileError is a RuntimeError; listed for clarity
        raise MediaError("undecodable", f"{path}: {error}") from error
    mono = data.mean(axis=1, dtype=np.float32)
    divisor = math.gcd(sample_rate, source_rate)
    up, down = sample_rate // divisor, source_rate // divisor
    if up != down and mono.size:
        mono = resample_poly(mono, up, down)
    return np.ascontiguousarray(mono, dtype=np.float32)


def probe_seconds(path: Path) -> float:
    """How many seconds of audio ``path`` holds, from its header (nothing is decoded).

    Raises :class:`MediaError` "missing file" or "undecodable".
    """
    path = Path(path)
    require_file(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise MediaError("undecodable", f"{path}: {error}") from error
    if info.samplerate <= 0:
        raise MediaError("undecodable", f"{path}: the header gives no sample rate")
    return float(info.frames / info.samplerate)
