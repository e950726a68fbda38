"""``jevons data import images family=mixed_modal``: captioned images to the mixed-modal family's token sequences.

The same inputs as the diffusion family's images (sidecar captions, imagefolder
``metadata.jsonl``, csv/parquet/jsonl manifests; :mod:`jevons.framework.data.importing.captioned`),
through this family's tokenisers:

* **words**: a caption is lower-cased and split into words and the punctuation ``, . ; :``
  (the built-in corpus's tokens); the vocabulary is every word of the input's captions,
  collected before any shard is written;
* **image codes**: the image (Pillow, EXIF orientation applied, 8-bit) as grayscale, resized
  and centre-cropped to the 16 x 16 canvas, each 2 x 2 patch replaced by the nearest of
  ``codebook_size`` k-means centroids. The codebook is ``codebook=PATH`` (a ``codebook.npy``,
  e.g. the built-in corpus's) or fitted with scikit-learn's ``MiniBatchKMeans`` on the patches of
  up to ``codebook_images`` distinct images of the input.

The output is the layout of ``captioned-digits``: ``vocab.json``, ``codebook.npy``, and per sample a
JSON member with the caption, the codes and the order (caption first or image first, chosen by the
content hash, so every rank and rerun agrees).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record, Skipped
from jevons.framework.data.importing.captioned import media_bytes, media_records
from jevons.recipes.diffusion.importer import IMAGE_SUFFIXES
from jevons.recipes.mixed_modal.captions import CANVAS
from jevons.recipes.mixed_modal.data import CODEBOOK_SIZE, PATCH, patches, quantise
from jevons.recipes.mixed_modal.tokens import Vocabulary

_WORD = re.compile(r"[a-z0-9']+|[,.;:]")


def caption_words(caption: str) -> list[str]:
    """The words (and ``, . ; :``) of a caption, lower-cased: the family's text tokens."""
    return _WORD.findall(caption.lower())


@dataclass
class MixedModalImageOptions(ImportOptions):
    codebook: str | None = None
    """A ``codebook.npy`` (centroids ``(K, 4)`` of 2 x 2 patches in [0, 1]) to use; null fits one on the input."""
    codebook_size: int = CODEBOOK_SIZE
    """Centroids of a fitted codebook."""
    codebook_images: int = 2000
    """Distinct images whose patches the codebook is fitted on (the first in input order)."""
    caption_field: str | None = None
    path_field: str | None = None

    PATH_OPTIONS: ClassVar[tuple[str, ...]] = (*ImportOptions.PATH_OPTIONS, "codebook")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(2 <= self.codebook_size <= 256, "codebook_size", self.codebook_size, "2 to 256 (codes are bytes)")
        require(self.codebook_images >= 1, "codebook_images", self.codebook_images, "a positive integer")


class MixedModalImageImporter(Importer[MixedModalImageOptions]):
    """Captioned images to caption-and-code sequences (see the module docstring)."""

    kind = "images"
    family = "mixed_modal"
    description = "captioned images as word and 2x2-patch code tokens (same inputs as the diffusion images)"
    options_class: ClassVar[type[ImportOptions]] = MixedModalImageOptions
    default_for_kind = False  # images train diffusion unless family=mixed_modal says so
    length_names = ("tokens",)

    def __init__(self, options: MixedModalImageOptions) -> None:
        super().__init__(options)
        self._vocabulary: Vocabulary | None = None
        self._codebook: np.ndarray | None = None

    def input_bytes(self, inputs: Sequence[Path]) -> int:
        return media_bytes(inputs, IMAGE_SUFFIXES, self.options.path_field)

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        for record in media_records(
            inputs, IMAGE_SUFFIXES, caption_field=self.options.caption_field, path_field=self.options.path_field
        ):
            if record.skip is None and not caption_words(record.payload["caption"]):
                yield Record(record.key, record.source, size=record.size, skip=Skipped("empty caption", "no words"))
            else:
                yield record

    def prepare(self, out: Path, records: Callable[[], Iterator[Record]], progress: bool) -> None:
        if (out / "vocab.json").exists():
            return
        words: set[str] = set()
        seen: set[bytes] = set()
        fit_on: list[np.ndarray] = []
        for record in records():
            if record.skip is not None or record.identity in seen:
                continue
            assert record.identity is not None
            seen.add(record.identity)
            words.update(caption_words(record.payload["caption"]))
            if self.options.codebook is None and len(fit_on) < self.options.codebook_images:
                image = _canvas(Path(record.payload["path"]), skip_bad=True)
                if image is not None:
                    fit_on.append(image)
        codebook = self._codebook_for(fit_on)
        vocabulary = {"words": sorted(words), "codebook_size": len(codebook), "image_tokens": (CANVAS // PATCH) ** 2}
        temporary = out / f".codebook.npy.tmp-{os.getpid()}"
        with open(temporary, "wb") as handle:
            np.save(handle, codebook)
        os.replace(temporary, out / "codebook.npy")
        temporary = out / f".vocab.json.tmp-{os.getpid()}"
        temporary.write_text(json.dumps(vocabulary, indent=1))
        os.replace(temporary, out / "vocab.json")  # last: its presence means prepare finished

    def _codebook_for(self, images: list[np.ndarray]) -> np.ndarray:
        from jevons.framework.errors import UsageError

        if self.options.codebook is not None:
            codebook = np.load(Path(self.options.codebook).expanduser())
            if codebook.ndim != 2 or codebook.shape[1] != PATCH * PATCH or len(codebook) > 256:
                raise UsageError(
                    f"codebook={self.options.codebook} has shape {codebook.shape}; expected (K <= 256, "
                    f"{PATCH * PATCH}): centroids of {PATCH}x{PATCH} patches."
                )
            return codebook.astype(np.float32)
        if not images:
            raise UsageError("No readable image to fit the codebook on: give codebook=PATH or readable images.")
        from sklearn.cluster import MiniBatchKMeans

        sample = patches(np.stack(images)).reshape(-1, PATCH * PATCH)
        clusters = min(self.options.codebook_size, len(np.unique(sample, axis=0)))
        kmeans = MiniBatchKMeans(clusters, random_state=0, n_init=3, batch_size=4096).fit(sample)
        return kmeans.cluster_centers_.astype(np.float32)

    def start_worker(self, out: Path) -> None:
        data = json.loads((out / "vocab.json").read_text())
        self._vocabulary = Vocabulary(tuple(data["words"]), int(data["codebook_size"]), int(data["image_tokens"]))
        self._codebook = np.load(out / "codebook.npy")

    def convert(self, record: Record) -> list[Converted]:
        assert self._vocabulary is not None and self._codebook is not None, "start_worker runs first"
        image = _canvas(Path(record.payload["path"]))
        assert image is not None
        codes = quantise(image[None], self._codebook)[0]
        words = caption_words(record.payload["caption"])
        assert record.identity is not None
        caption_first = bool(hashlib.blake2b(record.identity, digest_size=1).digest()[0] & 1)
        ids = self._vocabulary.sequence(self._vocabulary.encode_caption(" ".join(words)), codes, caption_first)
        fields = {
            "json": {
                "caption": " ".join(words),
                "codes": codes.astype(np.uint8).tobytes().hex(),
                "caption_first": caption_first,
            }
        }
        return [Converted(fields, [len(ids)])]

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        vocabulary = json.loads((out / "vocab.json").read_text())
        return {
            "canvas": CANVAS,
            "patch": PATCH,
            "codebook_size": vocabulary["codebook_size"],
            "words": len(vocabulary["words"]),
        }


def _canvas(path: Path, skip_bad: bool = False) -> np.ndarray | None:
    """The image as a ``(16, 16)`` grayscale canvas in [0, 1]; a bad file raises Skipped (or gives None)."""
    from PIL import Image

    from jevons.framework.data.media import MediaError
    from jevons.framework.data.media.images import fit, load_rgb

    try:
        rgb = load_rgb(path)
    except MediaError as error:
        if skip_bad:
            return None
        raise Skipped(error.reason, error.detail) from None
    gray = fit(rgb, CANVAS, CANVAS)
    return np.asarray(Image.fromarray(gray).convert("L"), dtype=np.float32) / 255.0
