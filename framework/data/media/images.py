"""Images as training samples: any file Pillow reads, upright, as 8-bit RGB, fitted to a size bucket.

Why each step:

* **Upright.** Cameras and phones store pixels in sensor order and record the
  rotation in the EXIF ``Orientation`` tag (TIFF/EXIF tag 0x0112); every viewer
  applies it, so a user expects to train on what they see.
  :func:`PIL.ImageOps.exif_transpose` applies it (and drops the tag).
* **Fully decoded.** :func:`PIL.Image.open` is lazy: it reads the header only,
  so a file cut short by an interrupted copy opens fine and fails (or, with
  ``ImageFile.LOAD_TRUNCATED_IMAGES``, silently comes back grey at the bottom)
  only when its pixels are read. :func:`load_rgb` calls ``Image.load()`` at once
  and leaves ``LOAD_TRUNCATED_IMAGES`` off, so a truncated file is reported as
  one, not trained on. Pillow raises ``OSError("image file is truncated ...")``
  for PNG and JPEG data that ends early, ``OSError("Truncated File Read")`` when
  a JPEG ends inside its headers, and :class:`PIL.UnidentifiedImageError` (an
  ``OSError``) when too little is left to tell the format; the first two are
  "truncated", the last "undecodable", as is any other decoder error.
* **8-bit RGB.** Models take three channels. Transparent pixels ("P" with a
  ``transparency`` entry, "LA", "RGBA", ...) are composited onto white, as
  browsers show them on a default page, rather than keeping whatever colour an
  encoder left under alpha 0 (often black). 16-bit grayscale ("I;16", as Pillow
  opens 16-bit PNGs) is scaled by 1/257 so that 0..65535 maps onto 0..255, as
  libpng's ``png_set_scale_16`` does; Pillow's own ``convert("L")`` clips at 255
  instead, which would turn nearly every 16-bit image white.
* **Fitted.** A batch holds one size; :func:`nearest_bucket` picks the bucket of
  closest aspect ratio (compared in log space, so 2:1 and 1:2 are equally far
  from 1:1), and :func:`fit` scales the image to cover it and crops the centre,
  the usual aspect-ratio bucketing: no padding, no distortion, the least cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jevons.framework.data.media import MediaError

__all__ = ["fit", "load_rgb", "nearest_bucket"]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_WHITE = (255, 255, 255)


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path``, fully decoded, EXIF orientation applied, as mode "RGB".

    Raises :class:`MediaError` "missing file", "truncated" or "undecodable".
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("missing file", f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with Image.open(path) as opened:
            opened.load()  # the full decode: a truncated file fails here, not in a training worker
            upright = ImageOps.exif_transpose(opened)  # a copy, so it outlives the closed file
            assert upright is not None  # only None with in_place=True
            rgb = _to_rgb(upright)
    except FileNotFoundError as error:  # removed between the check and the open
        raise MediaError("missing file", f"{path}: {error}") from error
    except UnidentifiedImageError as error:
        raise MediaError("undecodable", f"{path}: not an image Pillow can read") from error
    except OSError as error:
        reason = "truncated" if "truncated" in str(error).lower() else "undecodable"
        raise MediaError(reason, f"{path}: {error}") from error
    except (SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # Pillow's decoders raise SyntaxError for malformed chunks ("broken PNG file") and
        # ValueError for impossible headers; DecompressionBombError for absurd pixel counts.
        raise MediaError("undecodable", f"{path}: {type(error).__name__}: {error}") from error
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit "RGB": 16-bit grayscale scaled by 1/257, transparency composited onto white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # "I" is 32-bit signed; as Pillow opens it from 16-bit files it holds 0..65535, so clip to that range.
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        image = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # convert("RGBA") turns a palette's or tRNS chunk's transparency entry into an alpha band.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")  # "L", "1", "P" without transparency, "CMYK", "YCbCr"...


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The ``(width, height)`` bucket whose aspect ratio is closest to ``width / height`` in log space.

    Ties go to the bucket listed first.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"an image size must be positive, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    aspect = math.log(width / height)
    return min(buckets, key=lambda bucket: abs(math.log(bucket[0] / bucket[1]) - aspect))


def fit(image: Image.Image, width: int, height: int) -> np.ndarray:
    """``image`` scaled to cover ``width`` x ``height`` keeping its aspect, centre-cropped to exactly that.

    Returns a uint8 array of shape ``(height, width, 3)``. Shrinking uses Lanczos (with
    Pillow's ``reducing_gap``, which first box-reduces by an integer factor when the
    shrink is large, at no visible cost); enlarging uses bicubic.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"a target size must be positive, got {width}x{height}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    source_width, source_height = image.size
    scale = max(width / source_width, height / source_height)
    # max(): rounding must never leave the scaled image a pixel short of the target.
    scaled = (max(width, round(source_width * scale)), max(height, round(source_height * scale)))
    if scaled != image.size:
        if scale < 1:
            image = image.resize(scaled, Image.Resampling.LANCZOS, reducing_gap=3.0)
        else:
            image = image.resize(scaled, Image.Resampling.BICUBIC)
    left = (scaled[0] - width) // 2
    top = (scaled[1] - height) // 2
    cropped = image.crop((left, top, left + width, top + height))
    return np.array(cropped, dtype=np.uint8)
