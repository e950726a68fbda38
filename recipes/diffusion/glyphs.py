"""Glyph images and clips: letters and digits rendered with the fonts matplotlib ships, no download.

The digit testbed (scikit-learn's 8x8 digits, upsampled) holds 64 pixels of information an image, so
blur scores well on it and a low-resolution stage already holds all of a sample. Glyphs hold real
detail: serifs, stroke contrast, outlines, colour and a textured background, at 32 px.

* Classes: :data:`GLYPH_CLASSES`, the capital letters and digits without the pairs a font tells apart
  only by context (O/0, I/1; and so Q's and the other glyphs' own look-alikes stay: they differ in shape).
* Fonts: the 22 TrueType fonts in matplotlib's ``mpl-data/fonts/ttf`` whose character map gives each
  class a glyph of its own name (:data:`GLYPH_FONTS`, pinned; :func:`glyph_fonts` checks them): the
  Computer Modern symbol and extension fonts, the STIX size and non-Unicode variants, the two DejaVu
  display fonts and the last-resort font do not. Every tenth font (0, 10, 20: DejaVu Sans Bold,
  DejaVu Serif Italic, cmti10) is held out for validation, so validation glyphs come from fonts no
  model or feature network trained on, though their families' other weights and slants are trained on.
* Images (``glyph-images``): each class in each font ``VARIANTS`` times, at a random scale, rotation,
  shear and position, with random fill and outline colours over a textured background (smooth colour
  noise, sometimes stripes). Rendered at 4x and area-downsampled, so edges are antialiased.
* Clips (``glyph-clips``): 16 frames of one glyph that moves (bouncing off the walls) and rotates or
  scales over the clip, over a still background.

Samples are stored as the digit data is (``frames.npy`` uint8 ``(F, 32, 32, 3)``, ``labels.json``
``[class, none]`` where ``none`` is ``len(GLYPH_CLASSES)``), so the family's dataset reads them
unchanged. Each sample's randomness comes from its own ``(seed, font, class, variant)`` generator:
the data is the same whatever order or subset is built.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.family import DataSource

GLYPH_CLASSES = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""The 32 classes: capitals without I and O, digits without 0 and 1."""
NO_GLYPH = len(GLYPH_CLASSES)
"""Label of the empty second slot and of the unconditional input."""
CANVAS = 32
CLIP_FRAMES = 16
IMAGE_VARIANTS = 16
"""Images per (font, class): 22 fonts x 32 classes x 16 = 11,264 images."""
CLIP_VARIANTS = 6
"""Clips per (font, class): 22 x 32 x 6 = 4,224 clips."""
HOLD_OUT_EVERY = 10

_RENDER = 4  # render at 4x the canvas, then area-downsample: antialiased edges
_LAYER = CANVAS * _RENDER
_GLYPH_BOX = 100  # a glyph's larger side on the render layer before the pose scales it


def _font_folder() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _covers(font: Path, characters: str) -> bool:
    """Whether the font maps every character to a glyph of that character's own name (``two``, or an
    old-style ``twooldstyle``), and no two characters to one glyph. A character map alone is not enough:
    the Computer Modern symbol font maps ``2`` to ``element``, the last-resort font everything to one box."""
    from fontTools.agl import UV2AGL
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font), lazy=True).getBestCmap() or {}
    names = [cmap.get(ord(c)) for c in characters]
    if any(name is None for name in names) or len(set(names)) != len(names):
        return False
    return all(_own_name(str(name), UV2AGL[ord(c)]) for c, name in zip(characters, names))


def _own_name(name: str, base: str) -> bool:
    """``two``, ``twooldstyle`` or a suffixed variant ``two.alt`` of ``two``; not ``Alpha`` for ``A``."""
    return name in (base, base + "oldstyle") or name.startswith(base + ".")


GLYPH_FONTS = (
    "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf", "STIXGeneralItalic.ttf",
    "cmb10.ttf", "cmmi10.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)  # fmt: skip
"""The fonts of matplotlib's ``mpl-data`` that pass :func:`_covers` (listed from matplotlib 3.11), pinned: a matplotlib that adds a font
must not move the held-out split (font index % 10) under a committed feature network."""


@functools.cache
def glyph_fonts() -> tuple[Path, ...]:
    """The pinned fonts (:data:`GLYPH_FONTS`), in that order, from the installed matplotlib; each must
    still cover every class."""
    folder = _font_folder()
    missing = [name for name in GLYPH_FONTS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the glyph testbed renders with matplotlib's fonts, and {folder} lacks {missing}: install a "
            f"matplotlib that ships them (3.11 does)."
        )
    paths = tuple(folder / name for name in GLYPH_FONTS)
    failing = [path.name for path in paths if not _covers(path, GLYPH_CLASSES)]
    if failing:
        raise ValueError(f"{failing} no longer give each of {GLYPH_CLASSES} a glyph of its own name")
    return paths


def font_split(index: int) -> str:
    """``val`` for every tenth font (0, 10, 20, ...), ``train`` otherwise."""
    return "val" if index % HOLD_OUT_EVERY == 0 else "train"


@functools.cache
def _font(path: Path, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(str(path), size)


@functools.cache
def _fitted_size(path: Path, character: str) -> int:
    """The font size at which ``character``'s larger side is about ``_GLYPH_BOX`` pixels."""
    left, top, right, bottom = _font(path, _GLYPH_BOX).getbbox(character)
    return max(8, round(_GLYPH_BOX * _GLYPH_BOX / max(right - left, bottom - top, 1)))


@dataclass(frozen=True)
class Pose:
    """Where the glyph is on the canvas: scale (its larger side over the canvas side), rotation
    (degrees), horizontal shear, and centre offset (fractions of the canvas side)."""

    scale: float
    rotation: float
    shear: float
    dx: float
    dy: float


@dataclass(frozen=True)
class Style:
    fill: tuple[int, int, int]
    outline: tuple[int, int, int]
    outline_width: int  # on the 4x render layer
    background: np.ndarray  # (LAYER, LAYER, 3) uint8


def _luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise between two colours, and in a third of the samples faint stripes."""
    import torch
    import torch.nn.functional as F

    low, high = rng.uniform(0, 255, size=(2, 3))
    cells = int(rng.integers(2, 7))
    noise = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, cells, cells)).astype(np.float32))
    mix = F.interpolate(noise, size=(_LAYER, _LAYER), mode="bicubic", align_corners=True)[0, 0].clamp(0, 1).numpy()
    image = low + mix[..., None] * (high - low)
    if rng.uniform() < 1 / 3:
        angle, period = rng.uniform(0, np.pi), rng.uniform(10, 40)
        y, x = np.mgrid[0:_LAYER, 0:_LAYER]
        stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
        image = image + stripes[..., None] * rng.uniform(10, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def _style(rng: np.random.Generator) -> Style:
    background = _background(rng)
    mean = background.reshape(-1, 3).mean(0)
    while True:  # a fill that stands out from the background's mean colour
        fill = rng.uniform(0, 255, size=3)
        if abs(_luminance(fill) - _luminance(mean)) > 70:
            break
    outline = rng.uniform(0, 255, size=3)
    width = int(rng.choice([0, 0, 2, 4, 6]))
    return Style(
        tuple(int(v) for v in fill),  # type: ignore[arg-type]
        tuple(int(v) for v in outline),  # type: ignore[arg-type]
        width,
        background,
    )


def _random_pose(rng: np.random.Generator, scales: tuple[float, float] = (0.5, 0.85)) -> Pose:
    scale = float(rng.uniform(*scales))
    room = (1.0 - scale) / 2.0
    return Pose(
        scale=scale,
        rotation=float(rng.uniform(-20, 20)),
        shear=float(rng.uniform(-0.25, 0.25)),
        dx=float(rng.uniform(-room, room)),
        dy=float(rng.uniform(-room, room)),
    )


def _glyph_layer(font: Path, character: str, style: Style) -> Any:
    """The glyph centred on a transparent ``_LAYER`` square, about ``_GLYPH_BOX`` pixels on its larger side."""
    from PIL import Image, ImageDraw

    face = _font(font, _fitted_size(font, character))
    left, top, right, bottom = face.getbbox(character, stroke_width=style.outline_width)
    layer = Image.new("RGBA", (_LAYER, _LAYER), (0, 0, 0, 0))
    origin = ((_LAYER - (right - left)) / 2 - left, (_LAYER - (bottom - top)) / 2 - top)
    ImageDraw.Draw(layer).text(
        origin,
        character,
        font=face,
        fill=(*style.fill, 255),
        stroke_width=style.outline_width,
        stroke_fill=(*style.outline, 255),
    )
    return layer


def _posed(layer: Any, pose: Pose) -> Any:
    """``layer`` scaled, sheared, rotated and moved (Pillow's affine transform takes the inverse map)."""
    from PIL import Image

    zoom = pose.scale * _LAYER / _GLYPH_BOX
    angle = np.deg2rad(pose.rotation)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotate @ np.array([[1.0, pose.shear], [0.0, 1.0]]) * zoom
    inverse = np.linalg.inv(forward)
    centre = _LAYER / 2
    target = np.array([centre + pose.dx * _LAYER, centre + pose.dy * _LAYER])
    offset = centre - inverse @ target
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return layer.transform((_LAYER, _LAYER), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC)


def _frame(layer: Any, pose: Pose, background: Any) -> np.ndarray:
    from PIL import Image

    composed = Image.alpha_composite(background, _posed(layer, pose)).convert("RGB")
    return np.asarray(composed.resize((CANVAS, CANVAS), Image.Resampling.BOX))


def render_image(font: Path, character: str, rng: np.random.Generator) -> np.ndarray:
    """One glyph ``(32, 32, 3)`` uint8 at a random pose and style."""
    from PIL import Image

    style = _style(rng)
    pose = _random_pose(rng)
    background = Image.fromarray(style.background).convert("RGBA")
    return _frame(_glyph_layer(font, character, style), pose, background)


def render_clip(font: Path, character: str, rng: np.random.Generator, frames: int = CLIP_FRAMES) -> np.ndarray:
    """``(frames, 32, 32, 3)`` uint8: the glyph moves and bounces off the walls, and rotates or scales
    (or both) at a steady rate over the clip."""
    from PIL import Image

    style = _style(rng)
    start = _random_pose(rng, scales=(0.4, 0.65))  # smaller than a still glyph: room to move
    motion = rng.choice(["rotate", "scale", "both"])
    spin = float(rng.uniform(-4, 4)) if motion != "scale" else 0.0  # degrees a frame
    grow = float(rng.uniform(-0.02, 0.02)) if motion != "rotate" else 0.0  # scale a frame
    speed, heading = rng.uniform(0.015, 0.04), rng.uniform(0, 2 * np.pi)  # canvas sides a frame
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    layer = _glyph_layer(font, character, style)
    background = Image.fromarray(style.background).convert("RGBA")
    position = np.array([start.dx, start.dy])
    out = []
    for frame in range(frames):
        scale = float(np.clip(start.scale * (1 + grow) ** frame, 0.4, 0.9))
        room = (1.0 - scale) / 2.0
        for axis in range(2):  # bounce off the walls
            if abs(position[axis]) > room:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], -room, room)
        pose = Pose(scale, start.rotation + spin * frame, start.shear, float(position[0]), float(position[1]))
        out.append(_frame(layer, pose, background))
        position = position + velocity
    return np.stack(out)


def _sample_rng(seed: int, font: int, label: int, variant: int) -> np.random.Generator:
    return np.random.default_rng([seed, font, label, variant])


def glyph_samples(
    variants: int, clip: bool, seed: int = 0, fonts: Sequence[int] | None = None
) -> Iterator[tuple[str, dict[str, Any], list[int]]]:
    """``(split, sample, lengths)`` for every font (or those of ``fonts``, indexes into
    :func:`glyph_fonts`), class and variant, font by font."""
    paths = glyph_fonts()
    for font in range(len(paths)) if fonts is None else fonts:
        for label, character in enumerate(GLYPH_CLASSES):
            for variant in range(variants):
                rng = _sample_rng(seed + int(clip), font, label, variant)
                frames = (
                    render_clip(paths[font], character, rng)
                    if clip
                    else render_image(paths[font], character, rng)[None]
                )
                sample = {
                    "__key__": f"f{font:02d}_{character}_{variant:03d}",
                    "frames.npy": frames,
                    "labels.json": [label, NO_GLYPH],
                }
                yield font_split(font), sample, [len(frames)]


def build_glyphs(directory: Path, progress: bool, clip: bool, variants: int, seed: int = 0) -> None:
    """Render the glyph images or clips into ``directory``'s ``train`` and ``val`` shards."""
    from tqdm import tqdm

    from jevons.framework.data.shards import write_shards

    name = "glyph-clips" if clip else "glyph-images"
    fonts = glyph_fonts()
    total = len(fonts) * len(GLYPH_CLASSES) * variants
    splits: dict[str, list[tuple[dict[str, Any], list[int]]]] = {"train": [], "val": []}
    for split, sample, lengths in tqdm(
        glyph_samples(variants, clip, seed), total=total, desc=name, disable=not progress
    ):
        splits[split].append((sample, lengths))
    for split, items in splits.items():
        write_shards(
            iter(items), directory, split, length_names=["frames"], name=f"{name}/{split}", max_samples_per_shard=1000
        )
    meta = {
        "canvas": CANVAS,
        "frames": CLIP_FRAMES if clip else 1,
        "channels": 3,
        "classes": list(GLYPH_CLASSES),
        "fonts": {split: [p.name for i, p in enumerate(fonts) if font_split(i) == split] for split in splits},
        "seed": seed,
        "variants": variants,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))


GLYPH_IMAGES = DataSource(
    "glyph-images",
    f"{len(GLYPH_CLASSES)} letters and digits in matplotlib's fonts, 32 px RGB, posed over textures",
    lambda directory, progress: build_glyphs(directory, progress, clip=False, variants=IMAGE_VARIANTS),
    version=1,
)
GLYPH_CLIPS = DataSource(
    "glyph-clips",
    "one glyph moving, rotating or scaling over a texture, 32 px RGB x 16 frames",
    lambda directory, progress: build_glyphs(directory, progress, clip=True, variants=CLIP_VARIANTS),
    version=1,
)
