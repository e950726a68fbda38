"""Speech synthesis with espeak-ng (a Debian package, not a Python one): text in, 16 kHz waveform out."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jevons.framework.errors import UsageError
from jevons.recipes.speech.features import SAMPLE_RATE

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
"""espeak-ng's English voices that need no MBROLA database."""
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
"""Voice variants (pitch, formants, breathiness) applied on top of an accent."""


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    words_per_minute: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


def espeak_binary() -> str:
    """The espeak-ng executable, or a UsageError saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise UsageError(
            "The speech data is synthesised with espeak-ng, which is not installed. Install it with "
            "`apt-get install espeak-ng` (Debian, Ubuntu) or `brew install espeak-ng` (macOS), then run again; "
            "or point data.source at a folder of your own speech shards."
        )
    return path


def synthesize(text: str, voice: Voice, binary: str | None = None) -> np.ndarray:
    """``text`` spoken by ``voice``: a float32 waveform in [-1, 1] at 16 kHz."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "utterance.wav"
        command = [
            binary or espeak_binary(),
            "-v",
            voice.name,
            "-s",
            str(voice.words_per_minute),
            "-p",
            str(voice.pitch),
            "-w",
            str(path),
            text,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.exists():
            raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice.name}: {result.stderr.strip()}")
        with wave.open(str(path)) as audio:
            rate, raw = audio.getframerate(), audio.readframes(audio.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        divisor = np.gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return np.clip(samples, -1.0, 1.0)
