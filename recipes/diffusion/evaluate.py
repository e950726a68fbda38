"""What each diffusion validation adds: a sample grid (PNG) or clips (GIF), and the quality metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jevons.framework.family import EvalContext
from jevons.recipes.diffusion.data import NO_DIGIT
from jevons.recipes.diffusion.metrics import (
    classifier,
    features_and_predictions,
    frechet_distance,
    temporal_consistency,
)


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """``(B, C, F, H, W)`` in [-1, 1] to ``(B, F, H, W, C)`` uint8."""
    return ((videos.float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()


def grid(videos: np.ndarray, columns: int) -> np.ndarray:
    """Tile ``(B, F, H, W, C)`` into frames of a grid ``(F, rows * H, columns * W, C)``, 1 px gaps."""
    count, frames, height, width, channels = videos.shape
    rows = -(-count // columns)
    canvas = np.zeros((frames, rows * (height + 1), columns * (width + 1), channels), np.uint8)
    for index in range(count):
        r, c = divmod(index, columns)
        canvas[:, r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width] = videos[
            index
        ]
    return canvas


def save_grid(frames: np.ndarray, path: Path) -> Path:
    """A PNG for one frame, an animated GIF for several; grayscale when there is one channel."""
    from PIL import Image

    images = [
        Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f).resize(
            (f.shape[1] * 4, f.shape[0] * 4), Image.Resampling.NEAREST
        )
        for f in frames
    ]
    if len(images) == 1:
        path = path.with_suffix(".png")
        images[0].save(path)
    else:
        path = path.with_suffix(".gif")
        images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)
    return path


def class_labels(count: int) -> torch.Tensor:
    """``count`` single-digit labels cycling 0..9: ``(count, 2)`` with the second slot empty."""
    digits = torch.arange(count) % 10
    return torch.stack([digits, torch.full_like(digits, NO_DIGIT)], dim=1)


def quality(
    sampler: Any,
    shape: tuple[int, ...],
    real: torch.Tensor,
    images_dir: Path,
    count: int,
    batch: int,
    steps: int | None = None,
    seed: int = 0,
    **sampler_options: Any,
) -> dict[str, float]:
    """FD and accuracy (and temporal consistency for clips) of ``count`` class-conditional samples;
    ``sampler_options`` go to every sampler call (e.g. a cascade's ``stage_steps``)."""
    net = classifier(images_dir)
    labels = class_labels(count)
    samples = torch.cat(
        [
            sampler(labels[i : i + batch], shape, steps=steps, seed=seed + i, **sampler_options)
            for i in range(0, count, batch)
        ]
    )
    generated_features, logits = features_and_predictions(net, samples)
    real_features, _ = features_and_predictions(net, real)
    predicted = logits.mean(dim=1).argmax(dim=-1)  # one class per clip: mean over frames
    metrics = {
        "fd": frechet_distance(generated_features.flatten(0, 1), real_features.flatten(0, 1)),
        "accuracy": float((predicted == labels[:, 0]).float().mean()),
    }
    if shape[1] > 1:
        metrics["temporal_consistency"] = temporal_consistency(generated_features)
        metrics["temporal_consistency_real"] = temporal_consistency(real_features)
    return metrics


def evaluate(context: EvalContext, family: Any) -> dict[str, float]:
    cfg, data = context.config.sample, context.config.data
    shape = (context.config.model.channels, data.frames, data.resolution, data.resolution)
    columns = 10
    labels = class_labels(columns * cfg.grid_rows)
    videos = context.generator(labels, shape, seed=context.step)
    if context.is_rank_zero:
        folder = context.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = save_grid(grid(to_uint8(videos), columns), folder / f"step_{context.step:08d}")
        context.artifacts.append(path)
        if context.tensorboard is not None:
            tiled = grid(to_uint8(videos), columns)  # (F, H, W, C)
            if tiled.shape[0] == 1:
                context.tensorboard.add_image("samples", tiled[0], context.step, dataformats="HWC")
            else:
                context.tensorboard.add_video(
                    "samples", torch.from_numpy(tiled).permute(0, 3, 1, 2)[None], context.step, fps=8
                )
    if cfg.fd_samples <= 0:
        return {}
    real = family.real_reference(context.config, cfg.fd_samples)
    metrics = quality(
        context.generator, shape, real, family.images_dir(context.config), cfg.fd_samples, cfg.eval_batch, seed=10_000
    )
    return {f"val/{name}": value for name, value in metrics.items()}
