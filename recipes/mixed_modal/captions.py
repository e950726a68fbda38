"""Augmented handwritten digits and captions that describe what the augmentation did.

Each scikit-learn digit (8 x 8) is redrawn on a 16 x 16 canvas with a random
size, stroke thickness, tilt, position and background noise, and the caption
names the attributes a reader can see: "a thick handwritten seven, slightly
tilted to the left, in the top right corner". Templates and synonyms vary, so
a caption is not a fixed function of the image and the corpus is not
memorised in a few epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANVAS = 16
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Attributes:
    """What was drawn: the digit and the augmentation, in words a caption uses."""

    digit: int
    size: str  # small | medium | large
    thickness: str  # thin | regular | thick
    tilt: str  # upright | slightly left | slightly right | left | right
    row: str  # top | middle | bottom
    column: str  # left | centre | right
    noisy: bool


def draw(digit_image: np.ndarray, digit: int, rng: np.random.Generator) -> tuple[np.ndarray, Attributes]:
    """One augmented ``(16, 16)`` float image in [0, 1] of an 8 x 8 digit in [0, 1], and its attributes."""
    from scipy import ndimage

    side = int(rng.integers(8, 15))
    sprite = ndimage.zoom(digit_image, side / 8.0, order=1, grid_mode=True, mode="nearest")[:side, :side]
    thickness = str(rng.choice(["thin", "regular", "thick"], p=[0.3, 0.4, 0.3]))
    if thickness == "thick":
        sprite = ndimage.grey_dilation(sprite, size=(2, 2))
    elif thickness == "thin":
        sprite = np.clip((sprite - 0.45) / 0.4, 0.0, 1.0)  # keep the bright core of each stroke
    angle = float(rng.uniform(-25.0, 25.0))
    sprite = np.clip(ndimage.rotate(sprite, angle, reshape=False, order=1, mode="constant"), 0.0, 1.0)
    top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
    image = np.zeros((CANVAS, CANVAS), np.float32)
    image[top : top + side, left : left + side] = sprite
    noisy = bool(rng.random() < 0.3)
    if noisy:
        image = np.clip(image + np.abs(rng.normal(0.0, 0.18, image.shape)), 0.0, 1.0)
    centre_row, centre_column = top + side / 2, left + side / 2
    attributes = Attributes(
        digit=digit,
        size="small" if side <= 9 else "large" if side >= 13 else "medium",
        thickness=thickness,
        tilt=_tilt_words(angle),
        row=_third(centre_row, ("top", "middle", "bottom")),
        column=_third(centre_column, ("left", "centre", "right")),
        noisy=noisy,
    )
    return image.astype(np.float32), attributes


def _tilt_words(angle: float) -> str:
    # ndimage.rotate turns counter-clockwise for a positive angle: the top of the digit leans left.
    side = "left" if angle > 0 else "right"
    if abs(angle) < 8.0:
        return "upright"
    return f"slightly {side}" if abs(angle) < 16.0 else side


def _third(centre: float, names: tuple[str, str, str]) -> str:
    return names[min(2, int(centre // (CANVAS / 3)))]


def caption(attributes: Attributes, rng: np.random.Generator) -> str:
    """One of several phrasings of ``attributes``; lower case, commas as separate words."""
    a = attributes
    number = NUMBER_WORDS[a.digit] if rng.random() < 0.8 else str(a.digit)
    stroke = {"thin": rng.choice(["thin", "fine"]), "thick": rng.choice(["thick", "bold"]), "regular": ""}[a.thickness]
    size = "" if a.size == "medium" else a.size
    written = str(rng.choice(["handwritten", "hand drawn", ""]))
    details = [d for d in (_tilt_phrase(a.tilt, rng), _place_phrase(a.row, a.column, rng)) if d]
    if a.noisy:
        details.append(str(rng.choice(["on a noisy background", "with speckled noise"])))
    rng.shuffle(details)
    if rng.random() < 0.6:
        rest = [w for w in (size, stroke, written, number) if w]
        head = " ".join(["an" if rest[0] in ("eight", "8") else "a", *rest])
    else:
        head = " ".join(w for w in ("the", size, "digit", number) if w)
        if stroke:
            details.insert(0, f"written {stroke}")
    words = [head, *details]
    return " , ".join(words)


def _tilt_phrase(tilt: str, rng: np.random.Generator) -> str:
    if tilt == "upright":
        return str(rng.choice(["upright", "standing straight", ""]))
    return f"tilted to the {tilt}" if " " not in tilt else f"slightly tilted to the {tilt.split()[1]}"


def _place_phrase(row: str, column: str, rng: np.random.Generator) -> str:
    if row == "middle" and column == "centre":
        return str(rng.choice(["in the middle", "centred", ""]))
    if row == "middle":
        return f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"in the {row} {column} corner"
