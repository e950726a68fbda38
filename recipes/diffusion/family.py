"""The ``diffusion`` family: image and video diffusion transformers (diffusers' Wan) trained by rectified flow.

Images are one-frame videos. The model is :class:`~jevons.recipes.diffusion.model.DiffusionModel`:
a diffusers ``WanTransformer3DModel``, its conditioner (a learned class table,
or a text encoder's embeddings: :mod:`~jevons.recipes.diffusion.conditioning`)
and, for a latent model, a VAE. ``model.pretrained`` may be a released
diffusers pipeline folder (``Wan2.1-T2V-1.3B-Diffusers``), whose scheduler
config sets the sampler. The default objective is rectified flow with
condition dropout; the default generator samples with the diffusers flow
scheduler and classifier-free guidance. Plugins find the transformer's self-attention
modules (``blocks.N.attn1``, diffusers ``WanAttention``, whose processor they
may swap) and feed-forward modules through ``attention_modules`` and
``ffn_modules``.

This module stays light (no torch at import).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

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
    """A local folder (nothing is downloaded): a diffusers pipeline (``model_index.json``: its transformer,
    VAE, text encoder, tokenizer and scheduler), or a transformer folder (with ``pretrained_subfolder``);
    a class-conditional Jevons export (``benchmarks/teachers/*``) also restores the class table."""
    pretrained_subfolder: str | None = None
    vae: str | None = None
    """A VAE folder (``AutoencoderKLWan``; ``AutoencoderKL`` for images) instead of the pipeline's. With a VAE
    the model works on latents."""
    text_encoder: str | None = None
    """A text encoder folder (``UMT5EncoderModel``, ``T5EncoderModel``, ``CLIPTextModel``) instead of the pipeline's."""
    tokenizer: str | None = None
    """The text encoder's tokenizer folder instead of the pipeline's."""
    encoder_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The VAE's and text encoder's dtype (they are frozen)."""


@dataclass
class DiffusionDataConfig(DataConfig):
    source: str | list[str] = "digits-images"
    resolution: int = 16
    """Pixels per side the samples are resized to."""
    frames: int = 1
    """Frames per clip (1 for images); clips are subsampled in time to this many."""
    square: bool = True
    """Centre-crop pixel samples to ``resolution`` square; false keeps an import's stored (bucketed) size."""


@dataclass
class ConditioningConfig:
    kind: Literal["labels", "text"] = "labels"
    """What conditions a sample: class ``labels`` (a learned table), or ``text`` (a text encoder's embeddings)."""
    tokens: int = 4
    """Labels: conditioning tokens per class label."""
    classes: int | None = None
    """Labels: classes of the learned table; null: the data's (10 digits, 32 glyphs; an import's 10)."""
    dropout: float = 0.1
    """Probability of training a sample unconditionally (for classifier-free guidance): prompt dropout."""
    online: bool = False
    """Text: encode each batch's captions (and, with a VAE, its pixels) during training instead of reading
    precomputed embeddings and latents (``jevons data import latents``). For small setups."""
    max_length: int = 512
    """Text: tokens per prompt; embeddings are trimmed at the mask and zero-padded to this (WanPipeline's
    ``max_sequence_length``)."""
    negative_prompt: str = ""
    """Text: the unconditional (negative) prompt of guidance and of prompt dropout."""
    prompts: list[str] = field(default_factory=list)
    """Text: prompts of the sample grids and of data-free distillation; empty: the data's validation captions."""


@dataclass
class SampleConfig:
    steps: int = 20
    guidance: float = 2.0
    shift: float | None = None
    """Timestep shift of the flow scheduler (Wan uses 3 to 5; 1 is uniform); null: the pipeline
    folder's (UniPC's ``flow_shift``), else 1."""
    scheduler: Literal["flow_match_euler", "unipc"] | None = None
    """The diffusers scheduler sampling uses; null: the pipeline folder's, else ``flow_match_euler``."""
    frames: int | None = None
    """Frames of generated clips (null: ``data.frames``)."""
    height: int | None = None
    """Height of generated clips in pixels (null: the data's)."""
    width: int | None = None
    """Width of generated clips in pixels (null: the data's)."""
    fps: float = 16.0
    """Frames per second of written MP4s (precomputed latents: the import's)."""
    grid_rows: int = 2
    """Rows of the per-validation sample grid (a column per digit, or per prompt)."""
    fd_samples: int = 1000
    """Generated samples per quality measurement (Fréchet distance, accuracy); 0 turns it off."""
    eval_batch: int = 250

    def resolved_shift(self) -> float:
        """``shift`` as the family's validation resolved it (the pipeline folder's, else 1)."""
        return 1.0 if self.shift is None else self.shift


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
    parallelism = frozenset({"tensor", "shard", "ulysses"})

    def validate(self, config: DiffusionConfig) -> None:
        from jevons.recipes.diffusion.components import (
            adopt_pretrained,
            sample_shape,
            scheduler_config,
            text_folders,
            vae_folder,
        )

        cfg, data = config.model, config.data
        adopt_pretrained(cfg)
        pf, ph, pw = cfg.patch_size
        tp = config.parallel.tensor
        if cfg.num_heads % tp or cfg.ffn_dim % tp:
            raise UsageError(
                f"parallel.tensor={tp} must divide model.num_heads={cfg.num_heads} and model.ffn_dim={cfg.ffn_dim}: "
                f"tensor parallelism splits whole heads and feed-forward units across ranks."
            )
        ulysses = config.parallel.ulysses
        if ulysses > 1:
            self._check_ulysses(config, tp, ulysses)
        conditioning = config.conditioning
        if 0 < config.sample.fd_samples < 8:
            raise UsageError(
                f"sample.fd_samples={config.sample.fd_samples}: quality metrics need at least 8 samples (a covariance, "
                f"3-nearest-neighbour manifolds); 0 turns them off."
            )
        if not 0 <= conditioning.dropout < 1:
            raise UsageError(f"conditioning.dropout={conditioning.dropout} must be in [0, 1).")
        if conditioning.max_length < 1:
            raise UsageError(f"conditioning.max_length={conditioning.max_length} must be at least 1.")
        self._adopt_builtin_data(config)
        meta = self._adopt_imported_data(config)
        vae = vae_folder(cfg)
        if conditioning.kind == "text" and text_folders(cfg) is None:
            raise UsageError(
                "conditioning.kind=text needs a text encoder: model.pretrained=PIPELINE_DIR (a diffusers folder with "
                "text_encoder/ and tokenizer/) or model.text_encoder=DIR and model.tokenizer=DIR."
            )
        if conditioning.kind == "text":
            self._check_text_data(config, meta, vae)
        elif meta.get("kind") == "latents":
            raise UsageError(
                f"data.source={data.source} holds precomputed latents and text embeddings: set conditioning.kind=text."
            )
        elif vae is not None and meta and not conditioning.online:
            raise UsageError(
                f"the model has a VAE ({vae}) and data.source={data.source} holds pixels: precompute its latents "
                f"(jevons data import latents {data.source} out=DIR pipeline=...) and train on DIR, or set "
                f"conditioning.online=true to encode every batch."
            )
        folder_scheduler = scheduler_config(cfg)
        if config.sample.scheduler is None:
            folder_class = (folder_scheduler or {}).get("_class_name")
            config.sample.scheduler = "unipc" if folder_class == "UniPCMultistepScheduler" else "flow_match_euler"
        if config.sample.shift is None:
            folder_shift = (folder_scheduler or {}).get("flow_shift", (folder_scheduler or {}).get("shift"))
            config.sample.shift = float(folder_shift) if folder_shift is not None else 1.0
        _, frames, height, width = sample_shape(config)
        if height % ph or width % pw or (frames % pf and frames != 1):
            kind = "latents" if vae is not None else "pixels"
            raise UsageError(
                f"generated {kind} of {frames} frames x {width}x{height} are not multiples of "
                f"model.patch_size={cfg.patch_size} (frames, height, width): set data.resolution or sample.height "
                f"and sample.width."
            )

    def _check_text_data(self, config: DiffusionConfig, meta: dict[str, Any], vae: Path | None) -> None:
        """Text conditioning needs captioned data: precomputed latents made for this model, or pixels with
        captions encoded online. Fills ``conditioning.prompts`` from the validation captions when empty, so
        the run's ``config.yaml`` records them (``jevons sample`` and ``export`` rebuild from it)."""
        from jevons.recipes.diffusion.components import vae_geometry, validation_captions

        data, conditioning = config.data, config.conditioning
        if not meta:
            raise UsageError(
                f"conditioning.kind=text needs captioned data, and data.source={data.source} is built-in digits: "
                f"import your videos or images (jevons data import videos DIR out=CLIPS), precompute their latents "
                f"(jevons data import latents CLIPS out=LATENTS pipeline=...) and set data.source=LATENTS."
            )
        if meta.get("kind") == "latents":
            if vae is None:
                raise UsageError(
                    f"data.source={data.source} holds VAE latents but the model has no VAE to decode them: set "
                    f"model.pretrained=PIPELINE_DIR (or model.vae=DIR)."
                )
            if meta.get("text_dim") not in (None, config.model.text_dim):
                raise UsageError(
                    f"data.source={data.source} holds {meta['text_dim']}-wide text embeddings (from "
                    f"{meta.get('text_encoder')}); the transformer takes model.text_dim={config.model.text_dim}."
                )
            if int(meta.get("longest_text", 0)) > conditioning.max_length:
                raise UsageError(
                    f"data.source={data.source} holds text embeddings of up to {meta['longest_text']} tokens; "
                    f"conditioning.max_length={conditioning.max_length} would cut them: raise it."
                )
            sizes = list(meta.get("sizes") or {})
            if len(sizes) > 1 and (config.sample.height is None or config.sample.width is None):
                raise UsageError(
                    f"data.source={data.source} holds clips of sizes {sizes}: set sample.height and sample.width "
                    f"for the clips validation and jevons sample generate."
                )
        elif not conditioning.online:
            fix = (
                f"precompute its latents (jevons data import latents {data.source} out=DIR pipeline=...) and train "
                f"on DIR, or set conditioning.online=true to encode every batch"
                if vae is not None
                else "set conditioning.online=true to encode each batch's captions"
            )
            raise UsageError(f"data.source={data.source} holds pixels and captions: {fix}.")
        elif vae is not None:
            _, temporal, spatial = vae_geometry(vae)
            if (data.frames - 1) % temporal or (data.square and data.resolution % spatial):
                raise UsageError(
                    f"online encoding trains on data.frames={data.frames} frames of data.resolution="
                    f"{data.resolution} px (data.square=false: the import's size); the VAE ({vae}) takes "
                    f"{temporal}k + 1 frames and sides that are multiples of {spatial}."
                )
        if not conditioning.prompts:
            from jevons.framework.data.blend import parse_sources

            first = Path(parse_sources(data.source)[0][0]).expanduser()
            conditioning.prompts = validation_captions(first, 8)
            if not conditioning.prompts:
                raise UsageError(
                    f"conditioning.kind=text needs prompts to sample and to distil from, and data.source={data.source} "
                    f"has no validation captions: set conditioning.prompts=[...]."
                )

    def _adopt_builtin_data(self, config: DiffusionConfig) -> None:
        """Built-in data sets the class count and, for a model trained from scratch on glyphs, 3 channels (the
        digit recipes already say 1, and a mismatch there surfaces in the first step, as before); a
        pretrained model must match them."""
        from jevons.framework.data.blend import parse_sources
        from jevons.recipes.diffusion.components import vae_folder
        from jevons.recipes.diffusion.data import BUILTIN_GEOMETRY

        first = parse_sources(config.data.source)[0][0]
        if first not in BUILTIN_GEOMETRY:
            if config.conditioning.classes is None:
                config.conditioning.classes = BUILTIN_GEOMETRY["digits-images"].classes
            return
        geometry = BUILTIN_GEOMETRY[first]
        conditioning, model = config.conditioning, config.model
        if conditioning.classes is None:
            conditioning.classes = geometry.classes
        elif conditioning.kind == "labels" and conditioning.classes != geometry.classes:
            raise UsageError(
                f"data.source={first} has {geometry.classes} classes but conditioning.classes={conditioning.classes}: "
                f"leave conditioning.classes unset (null) to take the data's."
            )
        if geometry.channels != 1 and model.channels != geometry.channels and vae_folder(model) is None:
            if model.pretrained:
                raise UsageError(
                    f"data.source={first} holds {geometry.channels}-channel pixels but the pretrained model "
                    f"({model.pretrained}) takes model.channels={model.channels}: train it from scratch or on other data."
                )
            model.channels = geometry.channels

    def _adopt_imported_data(self, config: DiffusionConfig) -> dict[str, Any]:
        """A model trained from scratch takes its channels from an imported folder's ``meta.json``
        (RGB: 3; latents: the VAE's), a pretrained one must match it; clips generated from precomputed
        latents take the encoded clips' size unless ``sample.*`` sets one. Class labels must fit the conditioner's ten classes.
        Returns the meta (empty for built-in data)."""
        import json

        from jevons.framework.data.blend import parse_sources
        from jevons.recipes.diffusion.data import NO_DIGIT  # the classes are 0 .. NO_DIGIT - 1

        first = parse_sources(config.data.source)[0][0]  # the model takes the first source's channels
        meta_path = Path(first).expanduser() / "meta.json"
        if first in {s.name for s in self.data_sources()} or not meta_path.is_file():
            return {}
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        from jevons.recipes.diffusion.components import vae_folder

        latent_model = vae_folder(config.model) is not None  # pixels are the VAE's input, not the transformer's
        channels = meta.get("latent_channels") if meta.get("kind") == "latents" else meta.get("channels")
        if latent_model and meta.get("kind") != "latents":
            channels = None
        if channels is not None and channels != config.model.channels:
            if config.model.pretrained:
                raise UsageError(
                    f"data.source={first} holds {channels}-channel samples but the pretrained model "
                    f"({config.model.pretrained}) takes model.channels={config.model.channels}: import matching "
                    f"data or choose a model with {channels} channels."
                )
            config.model.channels = int(channels)
        sample = config.sample
        if meta.get("kind") == "latents":  # generate clips of the size the latents were encoded from
            sizes = list(meta.get("sizes") or {})
            if len(sizes) == 1 and sample.width is None and sample.height is None:
                sample.width, sample.height = (int(n) for n in sizes[0].split("x"))
            if sample.frames is None:
                sample.frames = int(meta["frames"])
            if meta.get("fps") and sample.fps == SampleConfig.fps:
                sample.fps = float(meta["fps"])
        labels = int(meta.get("num_labels") or 0)
        if labels > NO_DIGIT:
            raise UsageError(
                f"data.source={first} has class labels up to {labels - 1}; the class-conditional "
                f"model takes 0-{NO_DIGIT - 1}. Relabel them, or import without them (label_field=no_such_column)."
            )
        return meta

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.diffusion.data import IMAGES, VIDEOS
        from jevons.recipes.diffusion.glyphs import GLYPH_CLIPS, GLYPH_IMAGES

        return (IMAGES, VIDEOS, GLYPH_IMAGES, GLYPH_CLIPS)

    def check_blend(self, folders: list[Path]) -> None:
        import json

        described = []
        for folder in folders:
            meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
            if meta.get("kind") == "latents":  # latents blend only with latents of the same VAE and text encoder
                described.append(
                    f"latents of {meta.get('latent_channels')} channel(s) from {meta.get('vae')}, "
                    f"{meta.get('text_dim')}-wide text from {meta.get('text_encoder')}"
                )
            else:  # and only with samples of the same classes: "no class" is index 32 for glyphs, 10 otherwise
                classes = len(meta["classes"]) if "classes" in meta else 10
                described.append(
                    f"{meta.get('channels', 1)} channel(s), {meta.get('frames', 'clips')} frame(s), {classes} classes"
                )
        if len(set(described)) > 1:
            found = ", ".join(f"{folder} ({what})" for folder, what in zip(folders, described))
            raise UsageError(f"data.source blends samples of different kinds: {found}. Blend like with like.")

    def importers(self) -> Iterable[type[Importer[Any]]]:
        from jevons.recipes.diffusion.importer import ImageImporter, VideoImporter
        from jevons.recipes.diffusion.precompute import LatentImporter

        return (ImageImporter, VideoImporter, LatentImporter)

    def testbed(self, config: DiffusionConfig) -> Literal["glyphs", "digits"]:
        """Which quality metric scores this data's samples: the glyph testbed's for the glyph sources,
        else the digit testbed's (whose classifier is what earlier results were measured with)."""
        from jevons.framework.data.blend import parse_sources
        from jevons.recipes.diffusion.glyphs import GLYPH_CLIPS, GLYPH_IMAGES

        first = parse_sources(config.data.source)[0][0]
        return "glyphs" if first in (GLYPH_IMAGES.name, GLYPH_CLIPS.name) else "digits"

    def images_dir(self, config: DiffusionConfig) -> Path:
        """The digit images the quality classifier is trained on (built if missing)."""
        from jevons.framework.data.cache import data_root, ensure_built
        from jevons.recipes.diffusion.data import IMAGES

        return ensure_built(IMAGES, data_root(config.data.root))

    def _check_ulysses(self, config: DiffusionConfig, tp: int, ulysses: int) -> None:
        # Any token count works: framework.ulysses pads the sequence to a multiple of the group size.
        heads = config.model.num_heads
        if heads % (tp * ulysses):
            raise UsageError(
                f"parallel.tensor={tp} x ulysses={ulysses} = {tp * ulysses} must divide model.num_heads={heads}: "
                f"after tensor parallelism each Ulysses rank attends with whole heads."
            )

    def build_model(self, config: DiffusionConfig) -> torch.nn.Module:
        import torch

        from jevons.recipes.diffusion.components import build_conditioner, vae_folder
        from jevons.recipes.diffusion.model import DiffusionModel, build_transformer
        from jevons.recipes.diffusion.pipeline import LatentCodec, load_vae
        from jevons.recipes.diffusion.tensor_parallel import apply_tensor_parallel

        transformer = apply_tensor_parallel(build_transformer(config.model))
        if config.parallel.ulysses > 1:
            from jevons.recipes.diffusion.ulysses import apply_ulysses

            apply_ulysses(transformer)
        folder = vae_folder(config.model)
        codec = LatentCodec(load_vae(folder, getattr(torch, config.model.encoder_dtype))) if folder else None
        conditioner = build_conditioner(config, transformer.config["text_dim"])
        model = DiffusionModel(transformer, conditioner, codec)
        table = Path(config.model.pretrained or "") / "conditioner.safetensors"
        if config.model.pretrained and table.exists() and config.conditioning.kind == "labels":
            from safetensors.torch import load_file  # a Jevons export: the class table comes with it

            weights = load_file(str(table))["table"]
            expected = model.conditioner.get_parameter("table.weight")
            if weights.shape != expected.shape:
                raise UsageError(
                    f"{table} holds a class table of shape {tuple(weights.shape)}; this config's conditioner "
                    f"is {tuple(expected.shape)} (conditioning.classes + 1, conditioning.tokens x model.text_dim)."
                )
            expected.data.copy_(weights)
        return model.train()  # diffusers' from_pretrained hands modules back in eval mode

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        blocks = cast("DiffusionModel", model).blocks
        return [(f"transformer.blocks.{i}.attn1", block.attn1) for i, block in enumerate(blocks)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        blocks = cast("DiffusionModel", model).blocks
        return [(f"transformer.blocks.{i}.ffn", i, block.ffn) for i, block in enumerate(blocks)]

    def build_dataset(self, config: DiffusionConfig, split: str) -> MapDataset:
        from jevons.recipes.diffusion.data import DigitClips, LatentClips, is_latent_folder

        def build(folder: Path) -> MapDataset:
            if is_latent_folder(folder):
                return LatentClips.from_folder(folder, split, config.data, config.conditioning.max_length)
            captions = config.conditioning.kind == "text"
            return DigitClips.from_folder(folder, split, config.data, captions=captions)

        return self.blend(config, split, build)

    def real_reference(self, config: DiffusionConfig, count: int) -> torch.Tensor:
        """Up to ``count`` held-out samples ``(N, C, F, H, W)`` to compare generated ones with: on glyphs
        evenly spaced through the split (it is stored font by font, so its first samples are one font's),
        on digits the first ``count`` (what the digit testbed's results were measured against)."""
        import numpy as np
        import torch

        dataset = self.build_dataset(config, "val")
        count = min(count, len(dataset))
        if self.testbed(config) == "glyphs":
            indices = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
        else:
            indices = list(range(count))
        return torch.from_numpy(np.stack([dataset[i]["video"] for i in indices]))

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float | None:
        from jevons.framework.tensor_parallel import tensor_parallel_size
        from jevons.recipes.diffusion.flops import wan_train_flops

        diffusion = cast("DiffusionModel", model)
        if "latents" in batch:
            latent = tuple(batch["latents"].shape[1:])
        else:
            video = batch["video"]  # (B, C, F, H, W)
            codec = diffusion.codec
            latent = codec.latent_shape(*video.shape[2:]) if codec is not None else tuple(video.shape[1:])
        conditioner = diffusion.conditioner
        return wan_train_flops(
            diffusion.transformer.config,
            len(batch["latents"] if "latents" in batch else batch["video"]),
            latent,
            conditioner.tokens_per_sample(batch),
            conditioner.learned,
            tensor_parallel_size(),
        )

    def default_objective(self, model: torch.nn.Module, config: DiffusionConfig) -> Objective:
        from jevons.recipes.diffusion.objective import RectifiedFlowObjective

        return RectifiedFlowObjective(config.conditioning.dropout)

    def default_generator(self, model: torch.nn.Module, config: DiffusionConfig) -> Generator:
        from jevons.recipes.diffusion.components import scheduler_config
        from jevons.recipes.diffusion.generate import FlowSampler

        sample = config.sample
        assert sample.shift is not None and sample.scheduler is not None, "validate() resolved them"
        return FlowSampler(
            model, sample.steps, sample.guidance, sample.shift, sample.scheduler, scheduler_config(config.model)
        )

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        from jevons.recipes.diffusion.evaluate import evaluate

        return evaluate(context, self)

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """Options: ``steps``, ``guidance``, ``rows``, ``seed``; text: ``prompt`` (else the configured prompts)
        and ``negative_prompt``. Writes a grid (PNG, or GIF and MP4) and, for clips, one MP4 per sample."""
        from jevons.recipes.diffusion.components import sample_shape
        from jevons.recipes.diffusion.evaluate import grid, save_grid, save_mp4, to_uint8

        known = {"steps", "guidance", "rows", "seed", "prompt", "negative_prompt"}
        unknown = set(options) - known
        if unknown:
            raise UsageError(
                f"Unknown sample option(s) {', '.join(sorted(unknown))} for family diffusion; "
                f"options: {', '.join(sorted(known))}."
            )
        config = run.config
        steps = int(options.get("steps", config.sample.steps))
        guidance = float(options.get("guidance", config.sample.guidance))
        rows = int(options.get("rows", 2))
        conditioner = run.model.conditioner
        if ("prompt" in options or "negative_prompt" in options) and conditioner.kind != "text":
            raise UsageError("prompt= and negative_prompt= need a text-conditioned run (conditioning.kind=text).")
        if "prompt" in options or "negative_prompt" in options:
            condition, columns = self._prompted(run, options, rows)
        else:
            columns = min(10, conditioner.grid_columns)
            condition = conditioner.grid(columns * rows)
        samples = run.generator(
            condition, sample_shape(config), steps=steps, guidance=guidance, seed=int(options.get("seed", 0))
        )
        videos = to_uint8(run.model.to_pixels(samples))
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"step_{run.step:08d}_{steps}steps_g{guidance:g}"
        written = [save_grid(grid(videos, columns), out_dir / stem)]
        if videos.shape[1] > 1:
            fps = config.sample.fps
            written += [save_mp4(video, out_dir / f"{stem}_{index:03d}", fps) for index, video in enumerate(videos)]
        return written

    def _prompted(self, run: Any, options: dict[str, str], rows: int) -> tuple[Any, int]:
        """``rows`` samples of ``prompt=`` (each its own noise), with ``negative_prompt=`` as the negative."""
        import torch

        from jevons.recipes.diffusion.components import prompt_encoder
        from jevons.recipes.diffusion.conditioning import Condition

        conditioning = run.config.conditioning
        conditioner = run.model.conditioner
        encoder = conditioner.encoder or prompt_encoder(run.config)
        if "negative_prompt" in options:
            negative = encoder.embed([options["negative_prompt"]], conditioning.max_length)[0]
            conditioner.negative.copy_(negative.to(conditioner.negative))
        prompts = [options["prompt"]] if "prompt" in options else conditioner.prompt_texts
        embeddings = encoder.embed(prompts, conditioning.max_length).float()
        index = torch.arange(len(prompts) * rows) % len(prompts)
        return Condition(embeddings=embeddings[index]), len(prompts)

    def export(self, run: Any, out_dir: Path) -> list[Path]:
        """Class-conditional: the transformer folder and the class table. Text-conditioned: a diffusers
        ``WanPipeline`` folder (the trained transformer, the VAE, text encoder and tokenizer it was trained
        with, and the scheduler and shift it sampled with) that ``WanPipeline.from_pretrained`` runs.
        Staged under a temporary name, then renamed."""
        import shutil

        out_dir = Path(out_dir)
        if out_dir.exists():
            raise UsageError(f"{out_dir} exists; choose another out= or remove it.")
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        if run.model.conditioner.kind == "text":
            from jevons.recipes.diffusion.export import save_pipeline

            save_pipeline(run.model, run.config, staging)
        else:
            run.model.save_pretrained(staging)
        staging.rename(out_dir)
        return sorted(p for p in out_dir.rglob("*") if p.is_file())

    def export_adapter(self, run: Any, out_dir: Path) -> list[Path]:
        """The transformer's LoRA adapters as ``pytorch_lora_weights.safetensors``, which diffusers'
        ``WanPipeline.load_lora_weights`` (and ``WanTransformer3DModel.load_lora_adapter``) load onto the base."""
        from jevons.recipes.diffusion.lora_export import save_lora_file

        return save_lora_file(run.model, out_dir)
