"""What each mixed-modal validation adds: loss and perplexity per modality, images from captions, captions from images.

``val/loss_<modality>`` divides the dataset means of the objective's
``nll_<modality>_share`` and ``<modality>_fraction``, so it is the exact mean
over that modality's validation tokens. ``val/caption_digit_accuracy`` is the
fraction of generated captions (greedy, from held-out images) that name the
digit drawn, in words or as a numeral.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.family import EvalContext
from jevons.recipes.mixed_modal.captions import NUMBER_WORDS


def per_modality(metrics: dict[str, float], modalities: tuple[str, ...]) -> dict[str, float]:
    found: dict[str, float] = {}
    for name in modalities:
        share, fraction = metrics.get(f"val/nll_{name}_share"), metrics.get(f"val/{name}_fraction")
        if share is not None and fraction:
            found[f"val/loss_{name}"] = share / fraction
            found[f"val/perplexity_{name}"] = math.exp(min(share / fraction, 50.0))
    return found


def names_digit(caption: str, digit: int) -> bool:
    words = caption.replace(",", " ").split()
    return NUMBER_WORDS[digit] in words or str(digit) in words


def evaluate(context: EvalContext, data_dir: Path) -> dict[str, float]:
    from jevons.recipes.mixed_modal.data import CaptionedImages

    metrics = per_modality(context.metrics, context.model.modalities)
    cfg = context.config.generate
    generator = context.generator
    images = generator.images(
        cfg.captions,
        per_caption=cfg.images_per_caption,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        seed=context.step,
    )
    held_out = CaptionedImages.from_folder(data_dir, "val", context.config.data)
    samples = [held_out[i] for i in range(min(cfg.caption_images, len(held_out)))]
    samples = [s for s in samples if isinstance(s, dict)]
    captions = generator.captions(np.stack([s["codes"] for s in samples]), seed=context.step) if samples else []
    digits = [_digit_of(s["caption"]) for s in samples]
    accuracy = [names_digit(c, d) for c, d in zip(captions, digits) if d is not None]
    if accuracy:  # over the references that name a digit (an imported corpus's need not)
        metrics["val/caption_digit_accuracy"] = float(np.mean(accuracy))
    if context.is_rank_zero:
        folder = context.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        context.artifacts.append(
            save_image_grid(images, cfg.images_per_caption, folder / f"step_{context.step:08d}_images.png")
        )
        lines = [f"caption:   {c}\nreference: {s['caption'].replace(' ,', ',')}" for c, s in zip(captions, samples)]
        prompts = "\n".join(f"row {i}: {text}" for i, text in enumerate(cfg.captions))
        path = folder / f"step_{context.step:08d}_captions.txt"
        path.write_text(
            f"# images (rows of the PNG grid) from captions\n{prompts}\n\n# captions from held-out images\n"
            + "\n\n".join(lines)
            + "\n"
        )
        context.artifacts.append(path)
        if context.tensorboard is not None:
            context.tensorboard.add_text("captions", "\n\n".join(lines), context.step)
    return metrics


def _digit_of(reference: Any) -> int | None:
    """The digit a reference caption names, or None (a caption of a user's import need not name one)."""
    words = str(reference).split()
    for digit, word in enumerate(NUMBER_WORDS):
        if word in words or str(digit) in words:
            return digit
    return None


def save_image_grid(images: np.ndarray, columns: int, path: Path) -> Path:
    """``(N, H, W)`` images in [0, 1] as a grayscale PNG grid, ``columns`` per row, 1 px gaps, 4x enlarged."""
    from PIL import Image

    count, height, width = images.shape
    rows = -(-count // columns)
    canvas = np.full((rows * (height + 1), columns * (width + 1)), 64, np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        canvas[r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width] = np.round(
            np.clip(image, 0, 1) * 255
        )
    Image.fromarray(canvas).resize((canvas.shape[1] * 4, canvas.shape[0] * 4), Image.Resampling.NEAREST).save(path)
    return path
