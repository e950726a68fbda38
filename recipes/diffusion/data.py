"""The diffusion family's data: scikit-learn's bundled 8x8 digits as images and as moving-digit videos
(the digit testbed), the glyph testbed's sources (:mod:`~jevons.recipes.diffusion.glyphs`), and the
dataset that reads them all and users' imports.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships 1,797 handwritten
digits. ``digits-images`` upsamples each to 32 x 32 and adds four shifted and
rescaled copies (8,985 images); ``moving-digits`` draws one or two digits
(16 x 16 sprites) moving and bouncing off the walls of a 32 x 32 canvas for 16
frames (6,000 clips). Both are stored as uint8 arrays ``(frames, 32, 32)`` in
indexed shards with their labels; the dataset resizes to the recipe's
resolution and frame count when reading (16 px x 8 frames for the CPU video
recipe: every other frame, area-downsampled). Every tenth sample is held out.
Users' own data is a folder of ``train.json``/``val.json`` shard indexes whose
samples hold ``frames.npy`` (uint8, ``(F, H, W)`` or ``(F, H, W, C)``),
``labels.json`` and ``txt`` (the caption), or, precomputed from such a folder
by ``jevons data import latents``, ``latent.safetensors`` (the VAE latents and
the caption's trimmed text embedding: :class:`LatentClips`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.data.reader import Corrupt, ShardBackedDataset, ShardDataset, open_split
from jevons.framework.data.shards import decode_npy, write_shards
from jevons.framework.family import DataSource
from jevons.recipes.diffusion.glyphs import NO_GLYPH

CANVAS = 32
VIDEO_FRAMES = 16
NO_DIGIT = 10
"""Label of an empty second slot (a clip with one digit) and of the unconditional token."""


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)  # (N, 8, 8) in [0, 1]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a ``(H, W)`` float image, via torch (antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _image_samples(progress: bool) -> Iterator[tuple[str, dict[str, Any], list[int]]]:
    from tqdm import tqdm

    images, labels = _digits()
    rng = np.random.default_rng(0)
    for index in tqdm(range(len(images)), desc="digits-images", disable=not progress):
        base = _resize(images[index], 24)
        for copy in range(5):  # the digit as is, then four shifted and rescaled copies
            size = 24 if copy == 0 else int(rng.integers(20, 29))
            sprite = _resize(images[index], size) if copy else base
            canvas = np.zeros((CANVAS, CANVAS), np.float32)
            top, left = ((CANVAS - size) // 2,) * 2 if copy == 0 else rng.integers(0, CANVAS - size + 1, size=2)
            canvas[top : top + size, left : left + size] = sprite
            key = f"d{index:04d}_{copy}"
            yield key, {"frames.npy": _to_uint8(canvas)[None], "labels.json": [int(labels[index]), NO_DIGIT]}, [1]


def _video_samples(progress: bool, count: int = 6000) -> Iterator[tuple[str, dict[str, Any], list[int]]]:
    from tqdm import tqdm

    images, labels = _digits()
    sprites = np.stack([_resize(image, 16) for image in images])  # (N, 16, 16)
    rng = np.random.default_rng(1)
    for clip in tqdm(range(count), desc="moving-digits", disable=not progress):
        digits = rng.choice(len(images), size=int(rng.integers(1, 3)), replace=False)
        frames = np.zeros((VIDEO_FRAMES, CANVAS, CANVAS), np.float32)
        for digit in digits:
            position = rng.uniform(0, CANVAS - 16, size=2)
            velocity = rng.uniform(-2.5, 2.5, size=2)
            for frame in range(VIDEO_FRAMES):
                top, left = np.round(position).astype(int)
                frames[frame, top : top + 16, left : left + 16] = np.maximum(
                    frames[frame, top : top + 16, left : left + 16], sprites[digit]
                )
                position = position + velocity
                for axis in range(2):  # bounce off the walls
                    if not 0 <= position[axis] <= CANVAS - 16:
                        velocity[axis] = -velocity[axis]
                        position[axis] = np.clip(position[axis], 0, CANVAS - 16)
        pair = [int(labels[d]) for d in digits] + [NO_DIGIT] * (2 - len(digits))
        yield f"c{clip:05d}", {"frames.npy": _to_uint8(frames), "labels.json": pair}, [VIDEO_FRAMES]


def _build(samples: Iterator[tuple[str, dict[str, Any], list[int]]], directory: Path, name: str) -> None:
    splits: dict[str, list[tuple[dict[str, Any], list[int]]]] = {"train": [], "val": []}
    for number, (key, fields, lengths) in enumerate(samples):
        splits["val" if number % 10 == 0 else "train"].append(({"__key__": key, **fields}, lengths))
    for split, items in splits.items():
        write_shards(
            iter(items), directory, split, length_names=["frames"], name=f"{name}/{split}", max_samples_per_shard=1000
        )
    (directory / "meta.json").write_text(
        json.dumps({"canvas": CANVAS, "frames": VIDEO_FRAMES if "video" in name or "moving" in name else 1})
    )


def build_images(directory: Path, progress: bool) -> None:
    _build(_image_samples(progress), directory, "digits-images")


def build_videos(directory: Path, progress: bool) -> None:
    _build(_video_samples(progress), directory, "moving-digits")


IMAGES = DataSource(
    "digits-images", "scikit-learn's digits as 32 px images, with shifted and rescaled copies", build_images, version=1
)
VIDEOS = DataSource(
    "moving-digits", "one or two digits moving and bouncing, 32 px x 16 frames", build_videos, version=1
)


@dataclass(frozen=True)
class Geometry:
    """What a built-in source's samples are: how many classes, how many pixel channels."""

    classes: int
    channels: int


BUILTIN_GEOMETRY = {
    "digits-images": Geometry(NO_DIGIT, 1),
    "moving-digits": Geometry(NO_DIGIT, 1),
    "glyph-images": Geometry(NO_GLYPH, 3),
    "glyph-clips": Geometry(NO_GLYPH, 3),
}


def _decode(sample: dict[str, Any]) -> dict[str, Any]:
    frames = decode_npy(sample["frames.npy"])
    return {"frames": frames, "labels": json.loads(sample["labels.json"])}


class DigitClips(ShardBackedDataset):
    """Map-style samples ``{"video": (C, F, H, W) float in [-1, 1], "labels": (2,)}`` at the recipe's size,
    and with ``captions`` the sample's ``"caption"`` (for a text-conditioned model encoding online)."""

    def __init__(
        self, samples: ShardDataset, resolution: int, frames: int, captions: bool = False, square: bool = True
    ) -> None:
        super().__init__(samples)
        self.square = square
        self.resolution = resolution
        self.frames = frames
        self.captions = captions

    @classmethod
    def from_folder(cls, folder: Path, split: str, data_config: Any, captions: bool = False) -> DigitClips:
        decode = _decode_captioned if captions else _decode
        samples = open_split(folder, split, decode, data_config)
        return cls(samples, data_config.resolution, data_config.frames, captions, getattr(data_config, "square", True))

    def __getitem__(self, i: int) -> Any:
        sample = self.samples[i]
        if isinstance(sample, Corrupt):
            return sample
        frames = sample["frames"].astype(np.float32) / 255.0  # (F, H, W) or (F, H, W, C)
        if frames.ndim == 3:
            frames = frames[..., None]
        stride = max(1, frames.shape[0] // self.frames)
        frames = frames[::stride][: self.frames]
        height, width = frames.shape[1:3]
        if self.square and height != width:  # an aspect-ratio bucket of an import: the centre square, not squashed
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            frames = frames[:, top : top + side, left : left + side]
        if self.square and frames.shape[1] != self.resolution:  # unsquare: the import's own (bucketed) size
            frames = np.stack(
                [np.stack([_resize(f[..., c], self.resolution) for c in range(f.shape[-1])], -1) for f in frames]
            )
        video = np.transpose(frames, (3, 0, 1, 2)) * 2.0 - 1.0  # (C, F, H, W)
        item = {"video": video.astype(np.float32), "labels": np.asarray(sample["labels"], dtype=np.int64)}
        if self.captions:
            item["caption"] = sample["caption"]
        return item

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {
            "video": torch.from_numpy(np.stack([s["video"] for s in samples])),  # (B, C, F, H, W)
            "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])),  # (B, 2)
        }
        if "caption" in samples[0]:
            batch["captions"] = [s["caption"] for s in samples]
        return batch


def _decode_captioned(sample: dict[str, Any]) -> dict[str, Any]:
    if "txt" not in sample:
        raise ValueError("the sample has no caption (txt): a text-conditioned model needs one per sample")
    return {**_decode(sample), "caption": sample["txt"].decode()}


LATENT_FIELD = "latent.safetensors"
"""A precomputed sample's field: ``latents`` ``(C, F', H', W')`` and ``text`` ``(length, text_dim)``."""


def is_latent_folder(folder: Path) -> bool:
    meta = folder / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind") == "latents"


def _decode_latent(sample: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load

    tensors = load(sample[LATENT_FIELD])
    return {"latents": tensors["latents"].float(), "text": tensors["text"].float()}


class LatentClips(ShardBackedDataset):
    """Precomputed samples ``{"latents": (C, F', H', W'), "text_embeddings": (max_length, text_dim)}``: the
    embedding trimmed at its mask when stored, zero-padded here as WanPipeline pads it. Latents of one
    batch must share a shape (one import size, or the padding-aware sampler's buckets)."""

    def __init__(self, samples: ShardDataset, max_length: int) -> None:
        super().__init__(samples)
        self.max_length = max_length

    @classmethod
    def from_folder(cls, folder: Path, split: str, data_config: Any, max_length: int) -> LatentClips:
        return cls(open_split(folder, split, _decode_latent, data_config), max_length)

    def __getitem__(self, i: int) -> Any:
        return self.samples[i]

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from jevons.recipes.diffusion.text import pad_embeddings

        shapes = {tuple(s["latents"].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"a batch mixes latent shapes {sorted(shapes)}: enable padding_aware_sampling (it batches "
                f"one bucket at a time) or precompute one size"
            )
        return {
            "latents": torch.stack([s["latents"] for s in samples]),
            "text_embeddings": pad_embeddings([s["text"] for s in samples], self.max_length),
        }
