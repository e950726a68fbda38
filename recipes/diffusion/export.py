"""``jevons export`` of a text-conditioned latent run: a folder ``diffusers.WanPipeline`` loads and runs.

The folder is written by diffusers' own ``WanPipeline.save_pretrained``: the
trained transformer, the VAE, text encoder and tokenizer the run was trained
with (loaded from their folders, so their tensors are the originals), and the
scheduler the run sampled with, at its shift. For the same prompt, negative
prompt, seed, steps and guidance (and ``max_sequence_length`` =
``conditioning.max_length``) the pipeline's video is Jevons' sampler's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jevons.framework.errors import UsageError

if TYPE_CHECKING:
    from jevons.recipes.diffusion.family import DiffusionConfig
    from jevons.recipes.diffusion.model import DiffusionModel


def save_pipeline(model: DiffusionModel, config: DiffusionConfig, out: Path) -> None:
    import torch
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    from jevons.recipes.diffusion.components import scheduler_config, text_folders, vae_folder
    from jevons.recipes.diffusion.generate import make_scheduler
    from jevons.recipes.diffusion.pipeline import load_vae
    from jevons.recipes.diffusion.text import load_text_encoder, load_tokenizer

    vae, texts = vae_folder(config.model), text_folders(config.model)
    if vae is None or texts is None:
        raise UsageError(
            "a WanPipeline export needs the run's VAE and text encoder: this run has "
            f"{'no VAE' if vae is None else 'no text encoder'} (model.pretrained, model.vae, model.text_encoder)."
        )
    codec = model.codec
    if codec is not None and not codec.video:
        raise UsageError(
            f"the run's VAE ({vae}) is an image AutoencoderKL; a WanPipeline export needs Wan's video VAE "
            f"(AutoencoderKLWan). Export the transformer alone with the model's save_pretrained."
        )
    if "student_sigmas" in dict(model.named_buffers()):
        raise UsageError(
            "this run is a step-distilled student: it samples on its own schedule "
            f"{[round(s, 4) for s in model.get_buffer('student_sigmas').tolist()]}, which no diffusers scheduler "
            "reproduces; sample it with jevons sample instead."
        )
    channels = model.transformer.config["in_channels"]
    if codec is not None and channels != codec.channels:
        raise UsageError(
            f"the transformer takes {channels} input channels and the VAE gives {codec.channels}: a model changed "
            f"by a plugin (lowres_cascade's widened input) is not a WanPipeline transformer."
        )
    assert config.sample.scheduler is not None and config.sample.shift is not None, "validate() resolved them"
    tokenizer, encoder = texts
    dtype = getattr(torch, config.model.encoder_dtype)
    pipeline = WanPipeline(
        tokenizer=load_tokenizer(tokenizer),
        text_encoder=load_text_encoder(encoder, dtype),
        vae=load_vae(vae, dtype),
        transformer=model.transformer,
        scheduler=make_scheduler(config.sample.scheduler, config.sample.shift, scheduler_config(config.model)),
    )
    pipeline.save_pretrained(str(out), safe_serialization=True)
