"""Sample quality on the glyph testbed: a feature network trained once on real glyphs, and the
metrics over its features.

The digit testbed's metric (:mod:`~jevons.recipes.diffusion.metrics`) scores blur well; these metrics
rank degradations in the order of their severity (``tests/recipes/test_glyphs.py`` pins the Fréchet
distance's order for blur and for noise; precision is not monotone at mild blur). FID's Inception
network is a download and sees 32 px glyphs as noise, so a small CNN (:class:`GlyphFeatureNet`) is
trained on the ``glyph-images`` train fonts by ``benchmarks/glyph_features.py`` and committed
(``assets/glyph_features.safetensors``); it is never retrained where it scores, so every number on the
testbed comes from one network.

* :func:`frechet_interval`: the Fréchet distance (Heusel et al., 2017) with a bootstrap interval over
  both sample sets (recentred: resampling biases the distance upwards).
* :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al., 2019, "Improved
  Precision and Recall Metric for Assessing Generative Models"): a sample is inside a set's manifold
  if it lies within the k-th nearest-neighbour radius of one of the set's feature vectors; precision
  is the share of generated samples inside the real manifold, recall the share of real ones inside
  the generated manifold.
* class accuracy of class-conditional samples, from the network's own head.
* :func:`paired_distance`: for a distilled student, the mean feature distance to the teacher's sample
  drawn from the same noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jevons.recipes.diffusion.glyphs import CANVAS, GLYPH_CLASSES

FEATURES = 128
WEIGHTS = Path(__file__).resolve().parent / "assets" / "glyph_features.safetensors"
"""The committed feature network (``benchmarks/glyph_features.py`` trains it)."""


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class GlyphFeatureNet(nn.Module):
    """A VGG-style CNN on 32 px RGB glyphs: three double-conv blocks (32, 64, 128 channels) to 4 x 4,
    a 128-d feature layer and a classification head over :data:`GLYPH_CLASSES`."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(_block(3, 32), _block(32, 64), _block(64, 128))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, len(GLYPH_CLASSES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, 32, 32)`` in [-1, 1] to ``(features (B, 128), logits (B, classes))``."""
        features = self.features(self.convs(images))
        return features, self.head(features)


def glyph_feature_net(path: Path = WEIGHTS) -> GlyphFeatureNet:
    """The committed feature network, in eval mode."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"the glyph feature network {path} is missing: it is committed with the code; rebuild it with "
            f"`python benchmarks/glyph_features.py` (trains on glyph-images' train fonts)."
        )
    net = GlyphFeatureNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def frames_for_features(videos: torch.Tensor) -> torch.Tensor:
    """Videos ``(B, C, F, H, W)`` in [-1, 1] to RGB 32 px frames ``(B * F, 3, 32, 32)`` (gray repeated)."""
    batch, channels, frames, height, width = videos.shape
    if channels not in (1, 3):
        raise ValueError(f"glyph features take 1- or 3-channel pixels; got {channels} channels (decode latents first)")
    flat = videos.float().permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    if channels == 1:
        flat = flat.expand(-1, 3, -1, -1)
    if (height, width) != (CANVAS, CANVAS):
        flat = F.interpolate(flat, size=(CANVAS, CANVAS), mode="bilinear", align_corners=False, antialias=True)
    return flat


@torch.no_grad()
def features_and_logits(
    net: GlyphFeatureNet, videos: torch.Tensor, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame features ``(B, F, 128)`` and logits ``(B, F, classes)`` of videos ``(B, C, F, H, W)``."""
    frames = frames_for_features(videos.detach().float().cpu())  # the network lives on the CPU
    parts = [net(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    count, length = videos.shape[0], videos.shape[2]
    features = torch.cat([p[0] for p in parts]).reshape(count, length, FEATURES)
    logits = torch.cat([p[1] for p in parts]).reshape(count, length, -1)
    return features, logits


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def _frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    # tr((S_a S_b)^1/2) is the sum of the square roots of S_a S_b's eigenvalues, which are real and
    # non-negative (S_a S_b is similar to the PSD S_a^1/2 S_b S_a^1/2): cheaper than sqrtm per bootstrap.
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.sqrt(eigenvalues).sum())


def frechet_interval(
    generated: torch.Tensor,
    real: torch.Tensor,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    frames: int = 1,
) -> tuple[float, float, float]:
    """The Fréchet distance between feature sets ``(N, D)`` and ``(M, D)``, and a bootstrap interval at
    ``level``: both sets resampled with replacement ``resamples`` times. With ``frames > 1`` the rows are
    clips' frames, ``frames`` consecutive rows a clip, and whole clips are resampled (a clip's frames are
    not independent samples).

    A resample repeats samples, and the Fréchet distance of fewer distinct samples is larger (its bias
    grows as ``D / N``): the raw percentiles of the draws lie above the estimate (measured: 51 to 86
    around 22 for 768 held-out glyphs against 768 others). So the interval is the draws' percentiles
    recentred on the estimate, their spread around their own mean, clipped at zero."""
    a, b = generated.double().numpy(), real.double().numpy()
    distance = _frechet(*_gaussian(a), *_gaussian(b))
    rng = np.random.default_rng(seed)

    def resample(rows: np.ndarray) -> np.ndarray:
        if frames == 1:
            return rows[rng.integers(0, len(rows), len(rows))]
        clips = len(rows) // frames
        chosen = rng.integers(0, clips, clips)[:, None] * frames + np.arange(frames)
        return rows[chosen.reshape(-1)]

    draws = np.array([_frechet(*_gaussian(resample(a)), *_gaussian(resample(b))) for _ in range(resamples)])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(draws - draws.mean(), [tail, 100.0 - tail]) + distance
    return distance, float(max(low, 0.0)), float(high)


def _radii(features: torch.Tensor, k: int, batch: int = 1000) -> torch.Tensor:
    """Each vector's distance to its k-th nearest neighbour in its own set (itself excluded), ``batch``
    rows of the distance matrix at a time."""
    if len(features) <= k:
        raise ValueError(f"k-nearest-neighbour manifolds with k={k} need more than {k} samples; got {len(features)}")
    parts = [
        torch.cdist(features[i : i + batch], features).topk(k + 1, dim=1, largest=False).values[:, k]
        for i in range(0, len(features), batch)
    ]
    return torch.cat(parts)


def _inside(queries: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    inside = [
        (torch.cdist(queries[i : i + batch], manifold) <= radii[None]).any(dim=1) for i in range(0, len(queries), batch)
    ]
    return torch.cat(inside)


def precision_recall(generated: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of feature sets ``(N, D)``, ``(M, D)``
    with k-nearest-neighbour manifolds (the paper's k = 3)."""
    generated, real = generated.double(), real.double()
    precision = _inside(generated, real, _radii(real, k)).double().mean()
    recall = _inside(real, generated, _radii(generated, k)).double().mean()
    return float(precision), float(recall)


def paired_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean Euclidean distance between paired feature vectors ``(N, D)``: a student's sample and the
    teacher's from the same noise."""
    if features.shape != reference.shape:
        raise ValueError(
            f"paired features must match in shape; got {tuple(features.shape)} and {tuple(reference.shape)}"
        )
    return float((features.double() - reference.double()).norm(dim=-1).mean())


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(N, C, H, W)`` images blurred by a Gaussian of ``sigma`` pixels (separable, radius 3 sigma,
    reflected borders): the degradation the ranking test grades."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """``images`` in [-1, 1] plus Gaussian noise of ``std`` (in units of the [0, 1] pixel range), clipped."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device) * (2.0 * std)
    return (images + noise).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class GlyphQuality:
    """Quality of a set of samples against real glyphs."""

    fd: float
    fd_low: float
    fd_high: float
    precision: float
    recall: float
    accuracy: float | None
    samples: int
    paired_distance: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items() if value is not None}


def glyph_quality(
    net: GlyphFeatureNet,
    samples: torch.Tensor,
    real: torch.Tensor,
    labels: torch.Tensor | None = None,
    paired_with: torch.Tensor | None = None,
    resamples: int = 200,
) -> GlyphQuality:
    """Quality of ``samples`` ``(N, C, F, H, W)`` in [-1, 1] against ``real`` ones: the Fréchet distance
    over per-frame features (clips resampled whole for its interval); precision and recall over one
    vector per sample (a clip's frames averaged: a frame's nearest neighbours would otherwise be its own
    clip's); one class per clip (logits averaged over frames) for the accuracy against ``labels``
    ``(N,)``; the paired distance to ``paired_with`` (the teacher's samples from the same noise), frame
    by frame. ``samples`` in the result counts samples (clips), not frames."""
    features, logits = features_and_logits(net, samples)
    real_features, _ = features_and_logits(net, real)
    flat, real_flat = features.flatten(0, 1), real_features.flatten(0, 1)
    fd, low, high = frechet_interval(flat, real_flat, resamples, frames=samples.shape[2])
    precision, recall = precision_recall(features.mean(dim=1), real_features.mean(dim=1))
    accuracy = None
    if labels is not None:
        accuracy = float((logits.mean(dim=1).argmax(dim=-1) == labels.to(logits.device)).float().mean())
    paired = None
    if paired_with is not None:
        paired = paired_distance(flat, features_and_logits(net, paired_with)[0].flatten(0, 1))
    return GlyphQuality(fd, low, high, precision, recall, accuracy, len(samples), paired)
