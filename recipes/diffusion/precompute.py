"""``jevons data import latents IMPORTED_DIR out=DIR pipeline=WAN_DIR``: VAE latents and text embeddings.

Training a latent text-to-video model should run only its transformer, as
FastVideo and MUG-V train: this kind reads a folder ``jevons data import
videos`` (or ``images``) wrote, encodes every clip with the pipeline's VAE
(``AutoencoderKLWan``; ``AutoencoderKL`` for images) and every caption with
its text encoder, and writes shards of ``latent.safetensors`` samples:
``latents`` ``(C, F', H', W')`` normalised with the VAE config's mean and std,
and ``text``, the caption's embedding trimmed at its attention mask, both in
``dtype`` (bfloat16 or float16), beside the caption (``txt``). Samples keep
the import's train/validation split. Everything else — chunks, workers,
ranks (``launcher.nproc``, Slurm), resumption, the fingerprint that refuses
a rerun with another VAE — is the import engine's.

The posterior's mean is stored, not a sample of it, so a rerun writes the
same bytes and the latents of a clip do not depend on the rank that made them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from jevons.framework.config.schema import require
from jevons.framework.data.importing import Converted, Importer, ImportOptions, Record
from jevons.framework.errors import UsageError
from jevons.recipes.diffusion.data import LATENT_FIELD

SPLITS = ("train", "val")


@dataclass
class LatentImportOptions(ImportOptions):
    pipeline: str | None = None
    """A diffusers pipeline folder with ``vae/``, ``text_encoder/`` and ``tokenizer/`` (the one you train)."""
    vae: str | None = None
    """A VAE folder instead of the pipeline's."""
    text_encoder: str | None = None
    """A text encoder folder instead of the pipeline's."""
    tokenizer: str | None = None
    """The text encoder's tokenizer folder instead of the pipeline's."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """How latents and embeddings are stored."""
    encoder_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The dtype the VAE and text encoder run in."""
    max_length: int = 512
    """Tokens per caption (WanPipeline's ``max_sequence_length``); longer captions are truncated."""
    device: str = "auto"
    """Where the encoders run: ``cpu``, ``cuda``, ``cuda:N``; ``auto``: this rank's GPU if there is one."""
    workers: int | None = 0
    """Worker processes per rank: each holds its own VAE and text encoder (0: the rank's process)."""
    records_per_shard: int = 64

    UNCHANGING: ClassVar[frozenset[str]] = ImportOptions.UNCHANGING | {"device"}
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = (
        *ImportOptions.PATH_OPTIONS,
        "pipeline",
        "vae",
        "text_encoder",
        "tokenizer",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_length >= 1, "max_length", self.max_length, "a positive number of tokens")
        require(
            bool(self.pipeline) or bool(self.vae and self.text_encoder and self.tokenizer),
            "pipeline",
            self.pipeline,
            "a diffusers pipeline folder (pipeline=DIR), or vae=, text_encoder= and tokenizer= folders",
        )

    def folders(self) -> tuple[Path, Path, Path]:
        """``(vae, tokenizer, text_encoder)``."""
        from jevons.recipes.diffusion.pipeline import PipelineFolder

        pipeline = PipelineFolder.open(self.pipeline) if self.pipeline else None
        found = []
        for name in ("vae", "tokenizer", "text_encoder"):
            override = getattr(self, name)
            if override and not Path(override).is_dir():
                raise UsageError(f"{name}={override} is not a folder.")
            folder = Path(override) if override else (pipeline.component(name) if pipeline else None)
            if folder is None:
                raise UsageError(f"pipeline={self.pipeline} has no {name}/ folder; give {name}=DIR.")
            found.append(folder)
        return found[0], found[1], found[2]


class LatentImporter(Importer[LatentImportOptions]):
    """An imported folder's clips and captions to VAE latents and text embeddings (see the module docstring)."""

    kind = "latents"
    family = "diffusion"
    description = "an imported images/videos folder to VAE latents and text embeddings (pipeline=DIR)"
    options_class: ClassVar[type[ImportOptions]] = LatentImportOptions
    length_names = ("tokens", "frames")

    def __init__(self, options: LatentImportOptions) -> None:
        super().__init__(options)
        self._state: dict[str, Any] = {}
        self._source_meta: dict[str, Any] = {}  # the first input's meta.json, read by records()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": {}}  # encoders are loaded per worker, never pickled

    def input_bytes(self, inputs: Sequence[Path]) -> int:
        return sum(p.stat().st_size for folder in inputs for p in Path(folder).glob("*.tar"))

    def records(self, inputs: Sequence[Path]) -> Iterator[Record]:
        from jevons.framework.data.shards import read_index

        for given in inputs:
            folder = Path(given)
            meta = _source_meta(folder)
            self._source_meta = self._source_meta or meta
            if meta.get("kind") == "latents":
                raise UsageError(f"{folder} already holds latents; give the images or videos import it was made from.")
            for split in SPLITS:
                if not (folder / f"{split}.json").is_file():
                    continue
                index = read_index(folder / f"{split}.json")
                position = 0
                for shard_number, shard in enumerate(index.shards):
                    for offset in range(int(shard["nsamples"])):
                        yield Record(
                            key=f"{split}_{position:08d}",
                            source=f"{folder}/{split}.json#{position}",
                            payload={"folder": str(folder), "split": split, "shard": shard_number, "offset": offset},
                            size=int(shard.get("filesize", 0)) // max(1, int(shard["nsamples"])),
                            split=split,
                        )
                        position += 1

    def start_worker(self, out: Path) -> None:
        self._encoders()

    def _encoders(self) -> tuple[Any, Any]:
        if "codec" not in self._state:
            import torch

            from jevons.recipes.diffusion.pipeline import LatentCodec, load_vae
            from jevons.recipes.diffusion.text import PromptEncoder

            device = self.options.device
            if device == "auto":  # this rank's GPU: ranks of one machine share its GPUs by local rank
                from jevons.framework.process_env import process_env

                count = torch.cuda.device_count()
                device = f"cuda:{process_env().local_rank % count}" if count else "cpu"
            dtype = getattr(torch, self.options.encoder_dtype)
            vae, tokenizer, text_encoder = self.options.folders()
            self._state["codec"] = LatentCodec(load_vae(vae, dtype).to(device))
            self._state["text"] = PromptEncoder.from_folders(tokenizer, text_encoder, dtype)
            self._state["device"] = device
        return self._state["codec"], self._state["text"]

    def _sample(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The imported sample's raw fields (its shards are scanned once per worker and split)."""
        from jevons.framework.data.reader import ShardDataset
        from jevons.framework.data.shards import read_index

        key = (payload["folder"], payload["split"])
        datasets = self._state.setdefault("datasets", {})
        if key not in datasets:
            index = read_index(Path(payload["folder"]) / f"{payload['split']}.json")
            datasets[key] = (ShardDataset(index, lambda sample: sample, "strict"), index)
        dataset, index = datasets[key]
        position = sum(int(s["nsamples"]) for s in index.shards[: payload["shard"]]) + payload["offset"]
        return dataset.raw(position)

    def convert(self, record: Record) -> list[Converted]:
        import numpy as np
        import torch
        from safetensors.torch import save

        from jevons.framework.data.importing import Skipped
        from jevons.framework.data.shards import decode_npy

        raw = self._sample(record.payload)
        caption = raw.get("txt", b"").decode().strip()
        if not caption:
            raise Skipped("empty caption", "the imported sample has no caption (txt) to embed")
        codec, text = self._encoders()
        device = self._state["device"]
        frames = decode_npy(raw["frames.npy"])  # (F, H, W, 3) uint8
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=-1)
        codec.latent_shape(*frames.shape[:3])  # a size the VAE cannot take is a usage error, named
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        dtype = getattr(torch, self.options.dtype)
        latents = codec.encode(pixels.to(device))[0].to("cpu", dtype).contiguous()
        embedding = text.trimmed([caption], self.options.max_length, device)[0].to("cpu", dtype).contiguous()
        fields = {LATENT_FIELD: save({"latents": latents, "text": embedding}), "txt": caption}
        count, height, width = latents.shape[1:]
        tokens = count * math.ceil(height / 2) * math.ceil(width / 2)  # 1 x 2 x 2 patches, as Wan's
        return [Converted(fields, [tokens, count])]

    def observe(self, sample: Converted, stats: dict[str, Any]) -> None:
        from safetensors.torch import load

        tensors = load(sample.fields[LATENT_FIELD])
        latents, text = tensors["latents"], tensors["text"]
        shape = "x".join(str(n) for n in latents.shape)
        shapes = stats.setdefault("latent_shapes", {})
        shapes[shape] = shapes.get(shape, 0) + 1
        stats["text_dim"] = int(text.shape[-1])
        stats["channels"] = int(latents.shape[0])
        stats["longest_text"] = max(stats.get("longest_text", 0), int(text.shape[0]))

    def describe(self, out: Path, chunk_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        shapes: dict[str, int] = {}
        for stats in chunk_stats:
            for shape, count in stats.get("latent_shapes", {}).items():
                shapes[shape] = shapes.get(shape, 0) + count
        vae, tokenizer, text_encoder = self.options.folders()
        source = self._source_meta
        return {
            "kind": "latents",
            "latent_channels": next((s["channels"] for s in chunk_stats if "channels" in s), None),
            "latent_shapes": dict(sorted(shapes.items())),
            "text_dim": next((s["text_dim"] for s in chunk_stats if "text_dim" in s), None),
            "longest_text": max([s.get("longest_text", 0) for s in chunk_stats] + [0]),
            "max_length": self.options.max_length,
            "dtype": self.options.dtype,
            "frames": source.get("frames"),
            "sizes": source.get("sizes"),
            "fps": source.get("fps"),
            "vae": str(vae),
            "text_encoder": str(text_encoder),
            "tokenizer": str(tokenizer),
        }


def _source_meta(folder: Path) -> dict[str, Any]:
    meta = folder / "meta.json"
    if not meta.is_file() or not (folder / "train.json").is_file():
        raise UsageError(
            f"{folder} is not an imported folder (no meta.json and train.json): import your videos or images "
            f"first (jevons data import videos INPUT out={folder}), then precompute from it."
        )
    result: dict[str, Any] = json.loads(meta.read_text())
    return result
