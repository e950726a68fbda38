"""Sample quality for digit images and videos: a Fréchet distance over a small digit classifier's features.

At this scale FID's Inception network is the wrong yardstick (and is a
download), so the family trains a small CNN once on the digit images
(``digits-images`` train split, upsampled to 32 px) and caches it next to the
data. Its 128-d penultimate features stand in for Inception's in the Fréchet
distance (Heusel et al., 2017): ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)``
between generated and held-out real samples. Its predictions also give the
accuracy of class-conditional samples. For videos every frame is scored, and
temporal consistency is the mean cosine similarity of consecutive frames'
features (real clips of moving digits score near 1; flicker lowers it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 128
SIZE = 32


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 16, 16)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 8, 8)
        )
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 1, 32, 32)`` in [-1, 1] to ``(features (B, 128), logits (B, 10))``."""
        features = self.features(self.convs(images))
        return features, self.head(features)


def frames_for_classifier(videos: torch.Tensor) -> torch.Tensor:
    """Videos ``(B, C, F, H, W)`` in [-1, 1] to grayscale 32 px frames ``(B * F, 1, 32, 32)``."""
    batch, _channels, frames, height, width = videos.shape
    gray = videos.float().mean(dim=1, keepdim=True)  # (B, 1, F, H, W)
    flat = gray.permute(0, 2, 1, 3, 4).reshape(batch * frames, 1, height, width)
    if height != SIZE:
        flat = F.interpolate(flat, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return flat


def classifier(images_dir: Path) -> DigitClassifier:
    """The cached classifier for these digit images, trained on first use (a few seconds on a CPU)."""
    from safetensors.torch import load_file, save_file

    path = Path(images_dir) / "classifier.safetensors"
    with torch.random.fork_rng():  # the same weights whatever the caller's RNG state
        torch.manual_seed(0)
        model = DigitClassifier()
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        _train(model, Path(images_dir))
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    save_file(model.state_dict(), str(temporary))
    os.replace(temporary, path)
    return model.eval()


def _train(model: DigitClassifier, images_dir: Path, epochs: int = 3) -> None:
    from jevons.framework.data.reader import ShardDataset
    from jevons.framework.data.shards import decode_npy, read_index

    data = ShardDataset(
        read_index(images_dir / "train.json"),
        lambda s: (decode_npy(s["frames.npy"])[0], json.loads(s["labels.json"])[0]),
    )
    images = torch.from_numpy(np.stack([data[i][0] for i in range(len(data))])).float()[:, None] / 127.5 - 1.0
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    with torch.enable_grad():  # evaluation may call this under no_grad
        _epochs(model, optimizer, images, labels, generator, epochs)
    model.eval()


def _epochs(
    model: DigitClassifier,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    epochs: int,
) -> None:
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            _, logits = model(images[index])
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def features_and_predictions(
    net: DigitClassifier, videos: torch.Tensor, batch: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame features ``(B, F, 128)`` and logits ``(B, F, 10)``."""
    frames = frames_for_classifier(videos)
    parts = [net(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    features = torch.cat([p[0] for p in parts]).reshape(videos.shape[0], videos.shape[2], FEATURES)
    logits = torch.cat([p[1] for p in parts]).reshape(videos.shape[0], videos.shape[2], 10)
    return features, logits


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``(N, D)`` and ``(M, D)``."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real  # numerical noise; the product of two covariances has a real square root
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


def temporal_consistency(features: torch.Tensor) -> float:
    """Mean cosine similarity of consecutive frames' features ``(B, F, D)``; 1.0 for single frames."""
    if features.shape[1] < 2:
        return 1.0
    return float(F.cosine_similarity(features[:, 1:], features[:, :-1], dim=-1).mean())
