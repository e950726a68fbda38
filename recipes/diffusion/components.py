"""Where a diffusion run's components come from: the pipeline folder, per-component overrides, shapes.

``model.pretrained`` may be a diffusers pipeline folder (``model_index.json``)
or a bare transformer folder (with ``model.pretrained_subfolder``); the VAE,
text encoder and tokenizer come from the pipeline unless ``model.vae``,
``model.text_encoder`` or ``model.tokenizer`` name other folders. This module
stays light: it reads JSON configs, and imports torch only to build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jevons.framework.errors import UsageError
from jevons.recipes.diffusion.pipeline import PipelineFolder, component_config

if TYPE_CHECKING:
    from jevons.recipes.diffusion.conditioning import Conditioner
    from jevons.recipes.diffusion.family import DiffusionConfig, DiffusionModelConfig
    from jevons.recipes.diffusion.text import PromptEncoder

ENCODER_DTYPES = ("float32", "bfloat16", "float16")


def pipeline_of(model: DiffusionModelConfig) -> PipelineFolder | None:
    return PipelineFolder.open(model.pretrained) if model.pretrained else None


def vae_folder(model: DiffusionModelConfig) -> Path | None:
    pipeline = pipeline_of(model)
    if model.vae:
        return _folder("vae", model.vae)
    return pipeline.component("vae") if pipeline else None


def text_folders(model: DiffusionModelConfig) -> tuple[Path, Path] | None:
    """``(tokenizer, text_encoder)`` folders, or None when neither the pipeline nor the config names them."""
    pipeline = pipeline_of(model)
    found: list[Path | None] = []
    for name, override in (("tokenizer", model.tokenizer), ("text_encoder", model.text_encoder)):
        if override:
            found.append(_folder(name, override))
        elif pipeline is not None:
            found.append(pipeline.component(name))
        else:
            found.append(None)
    tokenizer, encoder = found
    if tokenizer is None and encoder is None:
        return None
    if tokenizer is None or encoder is None:
        missing = "tokenizer" if tokenizer is None else "text_encoder"
        raise UsageError(f"a text encoder needs its tokenizer and a tokenizer its encoder: set model.{missing}=DIR.")
    return tokenizer, encoder


def transformer_folder(model: DiffusionModelConfig) -> Path | None:
    """The folder ``WanTransformer3DModel.from_pretrained`` reads, or None for a model built from the config."""
    if not model.pretrained:
        return None
    pipeline = pipeline_of(model)
    if pipeline is not None:
        folder = pipeline.component("transformer")
        if folder is None:
            raise UsageError(f"the pipeline folder {model.pretrained} has no transformer/ to train.")
        return folder
    return _folder("pretrained", model.pretrained) / (model.pretrained_subfolder or "")


def adopt_pretrained(model: DiffusionModelConfig) -> None:
    """Set the model section to the pretrained transformer's shapes (its ``config.json``), so the rest of the
    config (tensor parallelism, channels, patches) is checked against the model that is loaded."""
    import json

    folder = transformer_folder(model)
    if folder is None:
        return
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"model.pretrained: {folder} has no config.json (expected a WanTransformer3DModel folder).")
    config = json.loads(path.read_text())
    if config.get("_class_name") != "WanTransformer3DModel":
        raise UsageError(
            f"{path}: the transformer is {config.get('_class_name')}; Jevons trains WanTransformer3DModel."
        )
    model.patch_size = list(config.get("patch_size", model.patch_size))
    model.num_heads = int(config.get("num_attention_heads", model.num_heads))
    model.head_dim = int(config.get("attention_head_dim", model.head_dim))
    model.num_layers = int(config.get("num_layers", model.num_layers))
    model.ffn_dim = int(config.get("ffn_dim", model.ffn_dim))
    model.text_dim = int(config.get("text_dim", model.text_dim))
    model.freq_dim = int(config.get("freq_dim", model.freq_dim))
    model.channels = int(config.get("in_channels", model.channels))
    model.rope_max_seq_len = int(config.get("rope_max_seq_len", model.rope_max_seq_len))


def scheduler_config(model: DiffusionModelConfig) -> dict[str, Any] | None:
    pipeline = pipeline_of(model)
    return pipeline.scheduler_config() if pipeline else None


def _folder(name: str, path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"model.{name}={path} is not a folder (nothing is downloaded: give a local path).")
    return folder


def vae_geometry(folder: Path) -> tuple[int, int, int]:
    """``(latent channels, temporal factor, spatial factor)`` from a VAE's ``config.json``, without loading it."""
    config = component_config(folder, "vae")
    if config["_class_name"] == "AutoencoderKLWan":
        return (
            int(config.get("z_dim", 16)),
            int(config.get("scale_factor_temporal", 4)),
            int(config.get("scale_factor_spatial", 8)),
        )
    return int(config.get("latent_channels", 4)), 1, 2 ** (len(config.get("block_out_channels", [0] * 4)) - 1)


def pixel_size(config: DiffusionConfig) -> tuple[int, int, int]:
    """``(frames, height, width)`` of generated clips: ``sample.*``, else the data's."""
    sample, data = config.sample, config.data
    return (
        sample.frames or data.frames,
        sample.height or data.resolution,
        sample.width or data.resolution,
    )


def sample_shape(config: DiffusionConfig) -> tuple[int, int, int, int]:
    """``(C, F, H, W)`` of what the model generates: pixels, or the VAE's latents of :func:`pixel_size`
    (Wan: ``(16, (F - 1) / 4 + 1, H / 8, W / 8)``, the noise shape WanPipeline draws)."""
    frames, height, width = pixel_size(config)
    vae = vae_folder(config.model)
    if vae is None:
        return (config.model.channels, frames, height, width)
    channels, temporal, spatial = vae_geometry(vae)
    if (frames - 1) % temporal or height % spatial or width % spatial:
        raise UsageError(
            f"sample size {frames} frames x {width}x{height} does not fit the VAE ({vae}): frames must be "
            f"{temporal}k + 1 and the sides multiples of {spatial}; set sample.frames, sample.height, sample.width."
        )
    return (channels, (frames - 1) // temporal + 1, height // spatial, width // spatial)


def prompt_encoder(config: DiffusionConfig) -> PromptEncoder:
    import torch

    from jevons.recipes.diffusion.text import PromptEncoder

    folders = text_folders(config.model)
    if folders is None:
        raise UsageError(
            "conditioning.kind=text needs a text encoder: model.pretrained=PIPELINE_DIR (with text_encoder/ and "
            "tokenizer/) or model.text_encoder=DIR and model.tokenizer=DIR."
        )
    return PromptEncoder.from_folders(*folders, dtype=getattr(torch, config.model.encoder_dtype))


def validation_captions(folder: Path | None, count: int) -> list[str]:
    """Up to ``count`` distinct captions of an import's validation split (``txt`` fields), in order."""
    if folder is None or not (folder / "val.json").is_file():
        return []
    from jevons.framework.data.reader import ShardDataset
    from jevons.framework.data.shards import read_index

    samples = ShardDataset(read_index(folder / "val.json"), lambda sample: sample)
    captions: list[str] = []
    for i in range(len(samples)):
        caption = samples.raw(i).get("txt", b"").decode()
        if caption and caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    return captions


def build_conditioner(config: DiffusionConfig, text_dim: int) -> Conditioner:
    """The model's conditioner for ``conditioning.kind``: a learned class table, or text embeddings of the
    empty and negative prompts and the sample prompts, encoded here once (the encoder is kept for ``online``).
    The prompts are ``conditioning.prompts``, which validation filled from the data's captions if empty."""
    from jevons.recipes.diffusion.conditioning import ClassConditioner, TextConditioner

    cfg = config.conditioning
    if cfg.kind == "labels":
        from jevons.recipes.diffusion.data import NO_DIGIT

        return ClassConditioner(text_dim, cfg.tokens, cfg.classes or NO_DIGIT)
    encoder = prompt_encoder(config)
    if encoder.width != text_dim:
        raise UsageError(
            f"the text encoder gives {encoder.width}-wide embeddings but the transformer takes "
            f"model.text_dim={text_dim}: choose a matching encoder or transformer."
        )
    if not cfg.prompts:
        raise UsageError(
            "conditioning.kind=text needs prompts to sample and to distil from: conditioning.prompts=[...]."
        )
    empty, negative = encoder.embed(["", cfg.negative_prompt], cfg.max_length)
    table = encoder.embed(cfg.prompts, cfg.max_length)
    return TextConditioner(negative, table, cfg.prompts, encoder if cfg.online else None, empty=empty)
