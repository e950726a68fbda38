"""The mixed-modal family's data: captioned, augmented handwritten digits as one token sequence each.

``captioned-digits`` (``jevons data captioned-digits``) draws each of
scikit-learn's 1,797 bundled digits many times on a 16 x 16 canvas with a
random size, stroke thickness, tilt, position and background noise
(:mod:`.captions`), captions each drawing with a varied phrasing of what was
done to it, and stores the image as 64 codes: each 2 x 2 pixel patch replaced
by the nearest of 256 k-means centroids fitted on the training patches
(``codebook.npy``; its reconstruction error is in ``meta.json``). Every tenth
digit is held out, so validation images are of digits never trained on.
Each sample has one order, drawn at build time: caption then image, or image
then caption (:mod:`.tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jevons.framework.data.reader import Corrupt, ShardBackedDataset, ShardDataset, open_split
from jevons.framework.data.shards import write_shards
from jevons.framework.family import DataSource
from jevons.recipes.mixed_modal.captions import CANVAS, caption, draw
from jevons.recipes.mixed_modal.tokens import PAD, Vocabulary

PATCH = 2
CODEBOOK_SIZE = 256
DRAWS = {"train": 32, "val": 4}
"""Augmented drawings per digit in each split."""


def patches(images: np.ndarray) -> np.ndarray:
    """``(N, 16, 16)`` images to ``(N, 64, 4)`` row-major 2 x 2 patches."""
    n, side = images.shape[0], CANVAS // PATCH
    return images.reshape(n, side, PATCH, side, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, side * side, PATCH * PATCH)


def unpatch(patch_values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`patches`: ``(N, 64, 4)`` to ``(N, 16, 16)``."""
    n, side = patch_values.shape[0], CANVAS // PATCH
    return patch_values.reshape(n, side, side, PATCH, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, CANVAS, CANVAS)


def quantise(images: np.ndarray, codebook: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Nearest-centroid codes ``(N, 64)`` of ``(N, 16, 16)`` images."""
    flat = patches(images).reshape(-1, PATCH * PATCH)
    codes = np.empty(len(flat), np.int64)
    squared = (codebook**2).sum(1)
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        codes[start : start + chunk] = np.argmin(squared[None, :] - 2.0 * part @ codebook.T, axis=1)
    return codes.reshape(len(images), -1)


def decode_codes(codes: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """``(N, 64)`` codes back to ``(N, 16, 16)`` images in [0, 1]."""
    return unpatch(codebook[np.asarray(codes)])


def _drawings(split: str, progress: bool) -> Iterator[tuple[np.ndarray, str, dict[str, Any]]]:
    from sklearn.datasets import load_digits
    from tqdm import tqdm

    digits = load_digits()
    indices = [i for i in range(len(digits.images)) if (i % 10 == 0) == (split == "val")]
    rng = np.random.default_rng({"train": 10, "val": 11}[split])
    for index in tqdm(indices, desc=f"captioned-digits/{split}", disable=not progress):
        for _ in range(DRAWS[split]):
            image, attributes = draw(digits.images[index] / 16.0, int(digits.target[index]), rng)
            text = caption(attributes, rng)
            yield image, text, {"source_index": index, **attributes.__dict__, "caption_first": bool(rng.random() < 0.5)}


def build_captioned_digits(directory: Path, progress: bool) -> None:
    """Draw, caption and quantise both splits; write shards, ``vocab.json``, ``codebook.npy``, ``meta.json``."""
    from sklearn.cluster import MiniBatchKMeans

    splits = {split: list(_drawings(split, progress)) for split in ("train", "val")}
    train_images = np.stack([image for image, _, _ in splits["train"]])
    sample = patches(train_images).reshape(-1, PATCH * PATCH)
    sample = sample[np.random.default_rng(0).choice(len(sample), size=min(len(sample), 200_000), replace=False)]
    codebook = MiniBatchKMeans(CODEBOOK_SIZE, random_state=0, n_init=3, batch_size=4096).fit(sample).cluster_centers_
    codebook = codebook.astype(np.float32)
    words = sorted({w for items in splits.values() for _, text, _ in items for w in text.split()})
    vocabulary = Vocabulary(tuple(words), CODEBOOK_SIZE, (CANVAS // PATCH) ** 2)
    meta: dict[str, Any] = {
        "canvas": CANVAS,
        "patch": PATCH,
        "codebook_size": CODEBOOK_SIZE,
        "words": len(words),
        "splits": {},
    }
    for split, items in splits.items():
        images = np.stack([image for image, _, _ in items])
        codes = quantise(images, codebook)
        error = float(np.mean((decode_codes(codes, codebook) - images) ** 2))
        meta["splits"][split] = {
            "samples": len(items),
            "digits": len(items) // DRAWS[split],
            "reconstruction_mse": round(error, 5),
        }

        def samples(
            items: list = items, codes: np.ndarray = codes, split: str = split
        ) -> Iterator[tuple[dict[str, Any], list[int]]]:
            for number, ((_, text, attributes), sample_codes) in enumerate(zip(items, codes)):
                ids = vocabulary.sequence(vocabulary.encode_caption(text), sample_codes, attributes["caption_first"])
                # One JSON member per sample: a tar member costs at least 1 KiB, so fields are not split.
                fields = {
                    "__key__": f"{split}{number:06d}",
                    "json": {"caption": text, "codes": sample_codes.astype(np.uint8).tobytes().hex(), **attributes},
                }
                yield fields, [len(ids)]

        write_shards(
            samples(),
            directory,
            split,
            length_names=["tokens"],
            name=f"captioned-digits/{split}",
            max_samples_per_shard=5000,
        )
    np.save(directory / "codebook.npy", codebook)
    (directory / "vocab.json").write_text(
        json.dumps({"words": words, "codebook_size": CODEBOOK_SIZE, "image_tokens": vocabulary.image_tokens}, indent=1)
    )
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))


CAPTIONED_DIGITS = DataSource(
    name="captioned-digits",
    description="scikit-learn's digits drawn 36 ways each on 16 px, captioned, as 2x2-patch k-means codes",
    build=build_captioned_digits,
    version=1,
)


def load_vocabulary(folder: Path) -> Vocabulary:
    data = json.loads((Path(folder) / "vocab.json").read_text())
    return Vocabulary(tuple(data["words"]), int(data["codebook_size"]), int(data["image_tokens"]))


def load_codebook(folder: Path) -> np.ndarray:
    return np.load(Path(folder) / "codebook.npy")


def _decode(sample: dict[str, Any]) -> dict[str, Any]:
    fields = json.loads(sample["json"])
    codes = np.frombuffer(bytes.fromhex(fields.pop("codes")), dtype=np.uint8).astype(np.int64)
    return {"codes": codes, "caption": fields.pop("caption"), "attributes": fields}


class CaptionedImages(ShardBackedDataset):
    """Map-style samples ``{"ids": (T,) int64, "caption": str, "codes": (64,)}``, one sequence each."""

    def __init__(self, samples: ShardDataset, vocabulary: Vocabulary) -> None:
        super().__init__(samples)
        self.vocabulary = vocabulary

    @classmethod
    def from_folder(cls, folder: Path, split: str, data_config: Any) -> CaptionedImages:
        return cls(open_split(folder, split, _decode, data_config), load_vocabulary(folder))

    def __getitem__(self, i: int) -> Any:
        sample = self.samples[i]
        if isinstance(sample, Corrupt):
            return sample
        caption_ids = self.vocabulary.encode_caption(sample["caption"])
        ids = self.vocabulary.sequence(caption_ids, sample["codes"], sample["attributes"]["caption_first"])
        return {
            "ids": ids,
            "caption": sample["caption"],
            "codes": sample["codes"],
            "first_code": self.vocabulary.first_code,
        }

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded next-token batch: ``input_ids``, ``targets``, ``loss_mask``, ``modality`` (of the
        inputs) and ``target_modality``, each ``(B, T - 1)``; ``captions`` and ``codes`` for evaluation."""
        import torch

        first_code = samples[0]["first_code"]
        longest = max(len(s["ids"]) for s in samples)
        ids = torch.full((len(samples), longest), PAD, dtype=torch.long)
        for row, sample in enumerate(samples):
            ids[row, : len(sample["ids"])] = torch.from_numpy(sample["ids"])
        real = torch.arange(longest)[None, :] < torch.tensor([len(s["ids"]) for s in samples])[:, None]
        modality = (ids >= first_code).long()
        return {
            "input_ids": ids[:, :-1],
            "targets": ids[:, 1:],
            "loss_mask": real[:, 1:].float(),
            "modality": modality[:, :-1],
            "target_modality": modality[:, 1:],
            "real": real[:, 1:],  # an input position is real when it has a target
            "captions": [s["caption"] for s in samples],
            "codes": torch.from_numpy(np.stack([s["codes"] for s in samples])),
        }
