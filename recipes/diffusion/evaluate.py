"""What each diffusion validation adds: a sample grid (PNG for images; GIF and MP4 for clips), TensorBoard
images or animations, and, for class-conditional models, the quality metrics of the testbed the data
belongs to: glyphs (:mod:`~jevons.recipes.diffusion.glyph_quality`) or digits
(:mod:`~jevons.recipes.diffusion.metrics`, kept so earlier numbers stay reproducible).

A latent model's samples are decoded through its VAE first. TensorBoard's own ``add_video`` needs
moviepy 1.x; an animated GIF in an image summary (what ``add_video`` writes) needs only Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jevons.framework.compat import tensorboard_add_summary
from jevons.framework.family import EvalContext
from jevons.recipes.diffusion.conditioning import Condition, class_labels
from jevons.recipes.diffusion.data import NO_DIGIT
from jevons.recipes.diffusion.glyphs import NO_GLYPH
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


def _images(frames: np.ndarray, scale: int) -> list[Any]:
    from PIL import Image

    return [
        Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f).resize(
            (f.shape[1] * scale, f.shape[0] * scale), Image.Resampling.NEAREST
        )
        for f in frames
    ]


def grid_scale(frames: np.ndarray) -> int:
    """Nearest-neighbour upscaling that makes a small grid viewable (4x up to 128 px, 1x from 512 px)."""
    return max(1, min(4, 512 // max(1, frames.shape[1])))


def save_grid(frames: np.ndarray, path: Path) -> Path:
    """A PNG for one frame, an animated GIF for several; grayscale when there is one channel."""
    images = _images(frames, grid_scale(frames))
    if len(images) == 1:
        path = path.with_suffix(".png")
        images[0].save(path)
    else:
        path = path.with_suffix(".gif")
        images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)
    return path


def save_mp4(frames: np.ndarray, path: Path, fps: float = 16.0) -> Path:
    """``(F, H, W, C)`` uint8 frames as an H.264 MP4 (PyAV), written under a temporary name then renamed."""
    import os
    from fractions import Fraction

    import av

    path = path.with_suffix(".mp4")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    height, width = frames.shape[1:3]
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p: even sides
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            padded = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path


def log_to_tensorboard(writer: Any, tag: str, frames: np.ndarray, step: int) -> None:
    """One frame as an image; several as an animated GIF in an image summary (what ``add_video`` writes,
    without moviepy)."""
    import io

    if frames.shape[0] == 1:
        writer.add_image(tag, frames[0], step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = _images(frames, 1)
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=120, loop=0)
    height, width, channels = frames.shape[1:]
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())
    tensorboard_add_summary(writer, Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def class_samples(
    sampler: Any,
    shape: tuple[int, ...],
    count: int,
    batch: int,
    classes: int = NO_DIGIT,
    steps: int | None = None,
    seed: int = 0,
    **sampler_options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` class-conditional samples cycling through the classes, ``batch`` at a time (batch ``i``
    from seed ``seed + i``, so two samplers given the same seed start from the same noise), and their
    labels ``(count, 2)``."""
    labels = class_labels(count, classes)
    samples = torch.cat(
        [
            sampler(Condition(labels=labels[i : i + batch]), shape, steps=steps, seed=seed + i, **sampler_options)
            for i in range(0, count, batch)
        ]
    )
    return samples, labels


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
    """The digit testbed: FD and accuracy (and temporal consistency for clips) of ``count``
    class-conditional samples over the digit classifier; ``sampler_options`` go to every sampler call
    (e.g. a cascade's ``stage_steps``)."""
    net = classifier(images_dir)
    samples, labels = class_samples(sampler, shape, count, batch, NO_DIGIT, steps, seed, **sampler_options)
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


def glyph_sample_quality(
    sampler: Any,
    shape: tuple[int, ...],
    real: torch.Tensor,
    count: int,
    batch: int,
    steps: int | None = None,
    seed: int = 0,
    paired_with: torch.Tensor | None = None,
    **sampler_options: Any,
) -> tuple[dict[str, float], torch.Tensor]:
    """The glyph testbed: FD with its bootstrap interval, precision, recall and class accuracy of
    ``count`` class-conditional samples against ``real`` glyphs, over the committed feature network;
    with ``paired_with`` (a teacher's samples from the same seeds) the paired distance too. Returns the
    metrics and the samples (a teacher's, to pair a student's with)."""
    from jevons.recipes.diffusion.glyph_quality import glyph_feature_net, glyph_quality

    samples, labels = class_samples(sampler, shape, count, batch, NO_GLYPH, steps, seed, **sampler_options)
    scores = glyph_quality(glyph_feature_net(), samples, real, labels[:, 0], paired_with)
    return scores.as_dict(), samples


def evaluate(context: EvalContext, family: Any) -> dict[str, float]:
    from jevons.recipes.diffusion.components import sample_shape
    from jevons.recipes.diffusion.generate import conditioner_of

    config = context.config
    cfg = config.sample
    conditioner = conditioner_of(context.model)
    columns = min(10, conditioner.grid_columns)
    shape = sample_shape(config)
    samples = context.generator(conditioner.grid(columns * cfg.grid_rows), shape, seed=context.step)
    if context.is_rank_zero:
        tiled = grid(to_uint8(context.model.to_pixels(samples)), columns)  # (F, H, W, C)
        folder = context.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        context.artifacts.append(save_grid(tiled, folder / f"step_{context.step:08d}"))
        if tiled.shape[0] > 1:
            context.artifacts.append(save_mp4(tiled, folder / f"step_{context.step:08d}", cfg.fps))
        if context.tensorboard is not None:
            log_to_tensorboard(context.tensorboard, "samples", tiled, context.step)
    if cfg.fd_samples <= 0 or conditioner.kind != "labels":
        return {}
    real = family.real_reference(config, cfg.fd_samples)
    if family.testbed(config) == "glyphs":
        metrics, _ = glyph_sample_quality(context.generator, shape, real, cfg.fd_samples, cfg.eval_batch, seed=10_000)
        metrics.pop("samples")
    else:
        images = family.images_dir(config)
        metrics = quality(context.generator, shape, real, images, cfg.fd_samples, cfg.eval_batch, seed=10_000)
    return {f"val/{name}": value for name, value in metrics.items()}
