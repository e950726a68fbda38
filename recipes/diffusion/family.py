"""The ``diffusion`` family: image and video diffusion transformers (diffusers' Wan) trained by rectified flow.

Images are one-frame videos. The model is :class:`~jevons.recipes.diffusion.model.DiffusionModel`:
a diffusers ``WanTransformer3DModel`` plus a learned class conditioner. The
default objective is rectified flow with condition dropout; the default
generator samples with diffusers' ``FlowMatchEulerDiscreteScheduler`` and
classifier-free guidance. Plugins find the transformer's self-attention
modules (``blocks.N.attn1``, diffusers ``WanAttention``, whose processor they
may swap) and feed-forward modules through ``attention_modules`` and
``ffn_modules``.

This module stays light (no torch at import).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from jevons.framework.config.schema import Config, DataConfig
from jevons.framework.errors import UsageError
from jevons.framework.family import DataSource, EvalContext, FamilyBase

if TYPE_CHECKING:
    import torch

    from jevons.framework.data.importing import Importer
    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator, MapDataset
    from jevons.recipes.diffusion.model import DiffusionModel


@dataclass
class DiffusionModelConfig:
    """A ``WanTransformer3DModel``; the defaults are the ~1M-parameter CPU model."""

    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    """(frames, height, width) per token."""
    num_heads: int = 4
    head_dim: int = 32
    num_layers: int = 4
    ffn_dim: int = 256
    text_dim: int = 64
    """Width of the conditioning tokens (4096 for Wan 2.1's umT5)."""
    freq_dim: int = 64
    channels: int = 1
    """Input and output channels: 1 for grayscale digit pixels, 16 for Wan's VAE latents."""
    rope_max_seq_len: int = 64
    pretrained: str | None = None
    """A local diffusers folder to load the transformer from (nothing is downloaded); a Jevons export
    (``jevons export``, ``benchmarks/teachers/*``, with ``pretrained_subfolder: transformer``) also
    restores the class conditioner."""
    pretrained_subfolder: str | None = None


@dataclass
class DiffusionDataConfig(DataConfig):
    source: str | list[str] = "digits-images"
    resolution: int = 16
    """Pixels per side the samples are resized to."""
    frames: int = 1
    """Frames per clip (1 for images); clips are subsampled in time to this many."""


@dataclass
class ConditioningConfig:
    tokens: int = 4
    """Conditioning tokens per digit label."""
    dropout: float = 0.1
    """Probability of training a sample unconditionally (for classifier-free guidance)."""


@dataclass
class SampleConfig:
    steps: int = 20
    guidance: float = 2.0
    shift: float = 1.0
    """Timestep shift of the flow-matching scheduler (Wan uses 5 at 480p; 1 is uniform)."""
    grid_rows: int = 2
    """Rows of the per-validation sample grid (ten columns: one per digit)."""
    fd_samples: int = 1000
    """Generated samples per quality measurement (Fréchet distance, accuracy); 0 turns it off."""
    eval_batch: int = 250


@dataclass
class DiffusionConfig(Config):
    """A diffusion run's config: the framework's sections, ``model``, the extended ``data``,
    ``conditioning`` and ``sample``."""

    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


class DiffusionFamily(FamilyBase[DiffusionConfig]):
    name = "diffusion"
    recipe_dir = Path(__file__).parent / "configs"
    config_class = DiffusionConfig
    capabilities = frozenset({"attention_processors", "video", "diffusion"})
    parallelism = frozenset({"tensor"})

    def validate(self, config: DiffusionConfig) -> None:
        cfg, data = config.model, config.data
        pf, ph, pw = cfg.patch_size
        if data.resolution % ph or data.resolution % pw or data.frames % pf:
            raise UsageError(
                f"data.resolution={data.resolution} and data.frames={data.frames} must be multiples of "
                f"model.patch_size={cfg.patch_size} (frames, height, width)."
            )
        tp = config.parallel.tensor
        if cfg.num_heads % tp or cfg.ffn_dim % tp:
            raise UsageError(
                f"parallel.tensor={tp} must divide model.num_heads={cfg.num_heads} and model.ffn_dim={cfg.ffn_dim}: "
                f"tensor parallelism splits whole heads and feed-forward units across ranks."
            )
        if not 0 <= config.conditioning.dropout < 1:
            raise UsageError(f"conditioning.dropout={config.conditioning.dropout} must be in [0, 1).")
        self._adopt_imported_data(config)

    def _adopt_imported_data(self, config: DiffusionConfig) -> None:
        """A model trained from scratch takes its channels from an imported folder's ``meta.json``
        (RGB: 3); a pretrained one must match it. Class labels must fit the conditioner's ten classes."""
        import json

        from jevons.framework.data.blend import parse_sources
        from jevons.recipes.diffusion.data import NO_DIGIT  # the classes are 0 .. NO_DIGIT - 1

        first = parse_sources(config.data.source)[0][0]  # the model takes the first source's channels
        meta_path = Path(first).expanduser() / "meta.json"
        if first in {s.name for s in self.data_sources()} or not meta_path.is_file():
            return
        meta = json.loads(meta_path.read_text())
        channels = meta.get("channels")
        if channels is not None and channels != config.model.channels:
            if config.model.pretrained:
                raise UsageError(
                    f"data.source={first} holds {channels}-channel samples but the pretrained model "
                    f"({config.model.pretrained}) takes model.channels={config.model.channels}: import matching "
                    f"data or choose a model with {channels} channels."
                )
            config.model.channels = int(channels)
        labels = int(meta.get("num_labels") or 0)
        if labels > NO_DIGIT:
            raise UsageError(
                f"data.source={first} has class labels up to {labels - 1}; the class-conditional "
                f"model takes 0-{NO_DIGIT - 1}. Relabel them, or import without them (label_field=no_such_column)."
            )

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.diffusion.data import IMAGES, VIDEOS

        return (IMAGES, VIDEOS)

    def check_blend(self, folders: list[Path]) -> None:
        import json

        described = []
        for folder in folders:
            meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
            described.append((meta.get("channels", 1), meta.get("frames", "clips")))
        if len(set(described)) > 1:
            found = ", ".join(f"{folder} ({c} channel(s), {f} frame(s))" for folder, (c, f) in zip(folders, described))
            raise UsageError(f"data.source blends samples of different shapes: {found}. Blend like with like.")

    def importers(self) -> Iterable[type[Importer[Any]]]:
        from jevons.recipes.diffusion.importer import ImageImporter, VideoImporter

        return (ImageImporter, VideoImporter)

    def images_dir(self, config: DiffusionConfig) -> Path:
        """The digit images the quality classifier is trained on (built if missing)."""
        from jevons.framework.data.cache import data_root, ensure_built
        from jevons.recipes.diffusion.data import IMAGES

        return ensure_built(IMAGES, data_root(config.data.root))

    def build_model(self, config: DiffusionConfig) -> torch.nn.Module:
        from jevons.recipes.diffusion.model import ClassConditioner, DiffusionModel, build_transformer
        from jevons.recipes.diffusion.tensor_parallel import apply_tensor_parallel

        transformer = apply_tensor_parallel(build_transformer(config.model))
        model = DiffusionModel(
            transformer, ClassConditioner(transformer.config["text_dim"], config.conditioning.tokens)
        )
        table = Path(config.model.pretrained or "") / "conditioner.safetensors"
        if config.model.pretrained and table.exists():  # a Jevons export: the class table comes with it
            from safetensors.torch import load_file

            weights = load_file(str(table))["table"]
            if weights.shape != model.conditioner.table.weight.shape:
                raise UsageError(
                    f"{table} holds a class table of shape {tuple(weights.shape)}; this config's conditioner "
                    f"is {tuple(model.conditioner.table.weight.shape)} (conditioning.tokens, model.text_dim)."
                )
            model.conditioner.table.weight.data.copy_(weights)
        return model.train()  # diffusers' from_pretrained hands modules back in eval mode

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        blocks = cast("DiffusionModel", model).blocks
        return [(f"transformer.blocks.{i}.attn1", block.attn1) for i, block in enumerate(blocks)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        blocks = cast("DiffusionModel", model).blocks
        return [(f"transformer.blocks.{i}.ffn", i, block.ffn) for i, block in enumerate(blocks)]

    def build_dataset(self, config: DiffusionConfig, split: str) -> MapDataset:
        from jevons.recipes.diffusion.data import DigitClips

        return self.blend(config, split, lambda folder: DigitClips.from_folder(folder, split, config.data))

    def real_reference(self, config: DiffusionConfig, count: int) -> torch.Tensor:
        """Up to ``count`` held-out samples ``(N, C, F, H, W)`` to compare generated ones with."""
        import numpy as np
        import torch

        dataset = self.build_dataset(config, "val")
        return torch.from_numpy(np.stack([dataset[i]["video"] for i in range(min(count, len(dataset)))]))

    def default_objective(self, model: torch.nn.Module, config: DiffusionConfig) -> Objective:
        from jevons.recipes.diffusion.objective import RectifiedFlowObjective

        return RectifiedFlowObjective(config.conditioning.dropout)

    def default_generator(self, model: torch.nn.Module, config: DiffusionConfig) -> Generator:
        from jevons.recipes.diffusion.generate import FlowSampler

        return FlowSampler(model, config.sample.steps, config.sample.guidance, config.sample.shift)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        from jevons.recipes.diffusion.evaluate import evaluate

        return evaluate(context, self)

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """Options: ``steps``, ``guidance``, ``rows`` (of ten digits), ``seed``."""
        from jevons.recipes.diffusion.evaluate import class_labels, grid, save_grid, to_uint8

        known = {"steps", "guidance", "rows", "seed"}
        unknown = set(options) - known
        if unknown:
            raise UsageError(
                f"Unknown sample option(s) {', '.join(sorted(unknown))} for family diffusion; options: {', '.join(sorted(known))}."
            )
        config, data = run.config, run.config.data
        steps = int(options.get("steps", config.sample.steps))
        guidance = float(options.get("guidance", config.sample.guidance))
        labels = class_labels(10 * int(options.get("rows", 2)))
        shape = (config.model.channels, data.frames, data.resolution, data.resolution)
        videos = run.generator(labels, shape, steps=steps, guidance=guidance, seed=int(options.get("seed", 0)))
        out_dir.mkdir(parents=True, exist_ok=True)
        return [save_grid(grid(to_uint8(videos), 10), out_dir / f"step_{run.step:08d}_{steps}steps_g{guidance:g}")]

    def export(self, run: Any, out_dir: Path) -> list[Path]:
        """A diffusers ``WanTransformer3DModel`` folder (``transformer/``) and the class table, staged then renamed."""
        import shutil

        out_dir = Path(out_dir)
        if out_dir.exists():
            raise UsageError(f"{out_dir} exists; choose another out= or remove it.")
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        run.model.save_pretrained(staging)
        staging.rename(out_dir)
        return sorted(p for p in out_dir.rglob("*") if p.is_file())
