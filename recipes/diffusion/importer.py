"""``jevons data import images`` / ``videos``: captioned media to the diffusion family's clip shards.

Inputs are a folder with sidecar ``name.txt`` captions, an imagefolder ``metadata.jsonl``, or a
manifest (FastVideo's ``videos2caption.json``, Open-Sora/MUG-V CSVs, parquet): see
:mod:`jevons.framework.data.importing.captioned`. Images are decoded with Pillow (EXIF
orientation applied; palette, alpha and 16-bit converted to 8-bit RGB), videos with PyAV
(metadata by probing the container; frames sampled at ``fps``). Each sample is resized to
cover its size and centre-cropped: ``resolution`` square, or with ``buckets`` the one of
several sizes closest in aspect ratio. A video gives up to ``max_clips`` non-overlapping
clips of ``frames`` frames (``4k + 1`` suits Wan's VAE, which keeps the first frame and
compresses each next 4 into one latent frame).

A sample holds ``frames.npy`` (uint8, ``(F, H, W, 3)``), ``labels.json`` (the optional
``label`` column, else the unconditional class, so today's class-conditional recipes train
on it) and ``txt`` (the caption). Its lengths are ``tokens`` (``F x H/16 x W/16``: one per
16 x 16 patch of each frame, the size Wan's 8x VAE and 2 x 2 patches give) and ``frames``,
so the padding-aware sampler buckets resolution x frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record
from jevons.framework.data.importing.captioned import media_bytes, media_records
from jevons.recipes.diffusion.data import NO_DIGIT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
PATCH = 16
"""Pixels per token side: Wan's VAE downsamples 8x and its transformer patches 2 x 2 latents."""


@dataclass
class MediaImportOptions(ImportOptions):
    resolution: int = 256
    """Square size (pixels a side) samples are resized and centre-cropped to, unless ``buckets`` are given."""
    buckets: list[str] = field(default_factory=list)
    """Target sizes ``WIDTHxHEIGHT`` (e.g. ``[256x256, 320x192, 192x320]``); each sample takes the one
    nearest its aspect ratio, recorded in its lengths. Empty: ``resolution`` square."""
    caption_field: str | None = None
    """The manifest column holding captions; null finds text, caption, cap, captions, prompt."""
    path_field: str | None = None
    """The manifest column holding file paths; null finds file_name, path, video_path, video, image..."""
    label_field: str = "label"
    """An optional integer class column, for class-conditional recipes."""
    require_caption: bool = True
    """Skip (as "empty caption") a file without a caption; false keeps it (class labels alone)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.resolution >= PATCH, "resolution", self.resolution, f"at least {PATCH} pixels")
        for bucket in self.buckets:
            require(_parse_bucket(bucket) is not None, "buckets", bucket, "sizes like 256x256 (WIDTHxHEIGHT)")

    def sizes(self) -> list[tuple[int, int]]:
        return [s for b in self.buckets if (s := _parse_bucket(b))] or [(self.resolution, self.resolution)]


@dataclass
class VideoImportOptions(MediaImportOptions):
    fps: float = 16.0
    """Frames per second clips are sampled at (Wan 2.1 trains at 16)."""
    frames: int = 33
    """Frames per clip; 4k + 1 for Wan-style latents (33 at 16 fps: about 2 s)."""
    max_clips: int = 8
    """Clips per video at most: non-overlapping windows from the start; a shorter video is skipped."""
    records_per_shard: int = 16
    """Videos per shard: frames are stored raw (uint8), so 16 videos of 8 clips of 33 x 256 x 256 are
    about 830 MB; a shard is also the unit a rerun redoes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.fps > 0, "fps", self.fps, "a positive number")
        require(self.frames >= 1, "frames", self.frames, "a positive integer")
        require(self.max_clips >= 1, "max_clips", self.max_clips, "a positive integer")


def _parse_bucket(text: str) -> tuple[int, int] | None:
    width, sep, height = str(text).lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < PATCH or int(height) < PATCH:
        return None
    return int(width), int(height)


class _CaptionedMedia(Importer[Any]):
    suffixes: ClassVar[tuple[str, ...]]
    length_names = ("tokens", "frames")

    def input_bytes(self, inputs: Sequence[Path]) -> int:
        return media_bytes(inputs, self.suffixes, self.options.path_field)

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        options = self.options
        return media_records(
            inputs,
            self.suffixes,
            caption_field=options.caption_field,
            path_field=options.path_field,
            label_field=options.label_field,
            require_caption=options.require_caption,
        )

    def _sample(self, frames: Any, record: Record, suffix: str = "") -> Converted:
        count, height, width = frames.shape[:3]
        label = record.payload["label"]
        fields = {
            "frames.npy": frames,
            "labels.json": [NO_DIGIT if label is None else label, NO_DIGIT],
            "txt": record.payload["caption"],
        }
        tokens = count * math.ceil(height / PATCH) * math.ceil(width / PATCH)
        return Converted(fields, [tokens, count], suffix)

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        frames = sample.fields["frames.npy"]
        size = f"{frames.shape[2]}x{frames.shape[1]}"
        sizes = stats.setdefault("sizes", {})
        sizes[size] = sizes.get(size, 0) + 1
        label = int(sample.fields["labels.json"][0])
        if label != NO_DIGIT:
            stats["max_label"] = max(stats.get("max_label", -1), label)
            stats["labelled"] = stats.get("labelled", 0) + 1

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sizes: dict[str, int] = {}
        for stats in chunk_stats:
            for size, count in stats.get("sizes", {}).items():
                sizes[size] = sizes.get(size, 0) + count
        labelled = sum(s.get("labelled", 0) for s in chunk_stats)
        return {
            "channels": 3,
            "resolution": self.options.resolution if not self.options.buckets else None,
            "sizes": dict(sorted(sizes.items())),
            "labelled": labelled,
            "num_labels": max([s.get("max_label", -1) for s in chunk_stats] + [-1]) + 1 if labelled else 0,
        }


class ImageImporter(_CaptionedMedia):
    """Captioned images to one-frame clips (see the module docstring)."""

    kind = "images"
    family = "diffusion"
    description = "captioned images (sidecar .txt, imagefolder metadata.jsonl, csv/parquet/jsonl manifest)"
    options_class: ClassVar[type[ImportOptions]] = MediaImportOptions
    suffixes = IMAGE_SUFFIXES

    def convert(self, record: Record) -> list[Converted]:
        from jevons.framework.data.media.images import fit, load_rgb, nearest_bucket

        image = load_rgb(Path(record.payload["path"]))  # a MediaError is the record's skip (the engine counts it)
        width, height = nearest_bucket(image.width, image.height, self.options.sizes())
        return [self._sample(fit(image, width, height)[None], record)]

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {**super().describe(out, chunk_stats), "frames": 1}


class VideoImporter(_CaptionedMedia):
    """Captioned videos to clips sampled at ``fps`` (see the module docstring)."""

    kind = "videos"
    family = "diffusion"
    description = "captioned videos (sidecar .txt, videos2caption.json, Open-Sora/MUG-V csv, parquet, jsonl)"
    options_class: ClassVar[type[ImportOptions]] = VideoImportOptions
    suffixes = VIDEO_SUFFIXES

    def convert(self, record: Record) -> list[Converted]:
        from jevons.framework.data.media.images import nearest_bucket
        from jevons.framework.data.media.videos import clip_starts, probe, read_clip

        options = self.options
        path = Path(record.payload["path"])
        info = probe(path)  # a MediaError here or below is the record's skip (the engine counts it)
        width, height = nearest_bucket(info.width, info.height, options.sizes())
        starts = clip_starts(info, options.fps, options.frames, options.max_clips)
        clips = [read_clip(path, start, options.fps, options.frames, width, height) for start in starts]
        return [self._sample(clip, record, f"-c{number}") for number, clip in enumerate(clips)]

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        options = self.options
        return {**super().describe(out, chunk_stats), "frames": options.frames, "fps": options.fps}
