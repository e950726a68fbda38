"""Log-mel filter-bank features with ``torch.stft``: no torchaudio (it pins torch to its own release).

The filter bank is the HTK mel scale with triangular filters, area-normalised
as in Slaney's Auditory Toolbox (the ``norm="slaney"`` of librosa and
torchaudio); librosa would add numba and llvmlite for these twenty lines.
Windows of 25 ms every 10 ms, as in Kaldi, NeMo and Whisper front ends.
"""

from __future__ import annotations

import functools

import torch

SAMPLE_RATE = 16_000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms


def num_frames(num_samples: int) -> int:
    """Frames ``log_mel`` returns for a waveform of ``num_samples`` (centred windows)."""
    return 1 + num_samples // HOP


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filter_bank(num_mels: int, n_fft: int = WINDOW, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(num_mels, n_fft // 2 + 1)`` triangular filters evenly spaced on the mel scale up to Nyquist."""
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(0.0, float(_hz_to_mel(torch.tensor(sample_rate / 2.0))), num_mels + 2, dtype=torch.float64)
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters *= 2.0 / (upper - lower)  # Slaney: each filter has unit area, so wide high filters are not louder
    return filters.float()


def log_mel(waveform: torch.Tensor, num_mels: int = 80) -> torch.Tensor:
    """``(frames, num_mels)`` natural-log mel energies of a mono float waveform at 16 kHz."""
    window = torch.hann_window(WINDOW, dtype=waveform.dtype)
    spectrum = torch.stft(waveform, n_fft=WINDOW, hop_length=HOP, window=window, center=True, return_complex=True)
    power = spectrum.abs().pow(2)  # (freq, frames)
    mel = mel_filter_bank(num_mels) @ power
    return torch.log(mel.clamp(min=1e-10)).transpose(0, 1)
