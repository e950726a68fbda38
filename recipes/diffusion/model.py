"""The diffusion family's model: a diffusers ``WanTransformer3DModel``, its conditioner and, for latents, a VAE.

The transformer *is* a diffusers model (Wan 2.1's architecture: patchified
3-D video tokens, self-attention with 3-D RoPE, cross-attention to the text
tokens), so it saves with ``save_pretrained`` and loads with
``from_pretrained``; images are one-frame videos. Conditioning reaches it
through ``encoder_hidden_states``, from the model's
:class:`~jevons.recipes.diffusion.conditioning.Conditioner`: a learned table
per digit class, or text-encoder embeddings (see that module).

Shapes: samples ``(B, C, F, H, W)`` (pixels, or VAE latents); conditioning
``(B, L, text_dim)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from jevons.recipes.diffusion.conditioning import ClassConditioner, Condition, Conditioner

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock

    from jevons.recipes.diffusion.family import DiffusionModelConfig
    from jevons.recipes.diffusion.pipeline import LatentCodec

__all__ = ["ClassConditioner", "DiffusionModel", "build_transformer"]


class DiffusionModel(nn.Module):
    """``transformer(x_t, t * 1000, conditioner(condition))``: the velocity of rectified flow.

    ``codec`` (a :class:`~jevons.recipes.diffusion.pipeline.LatentCodec`, held outside the module tree:
    frozen, never saved with the run) makes it a latent model: batches of pixels are encoded online,
    samples are decoded for viewing. Without one the model works on pixels."""

    def __init__(
        self, transformer: WanTransformer3DModel, conditioner: Conditioner, codec: LatentCodec | None = None
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.conditioner = conditioner
        self._codec = [codec] if codec is not None else []  # a list: not a submodule

    @property
    def codec(self) -> LatentCodec | None:
        return self._codec[0] if self._codec else None

    @property
    def blocks(self) -> list[WanTransformerBlock]:
        """The transformer's blocks, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("list[WanTransformerBlock]", list(self.transformer.blocks))

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The velocity for ``noisy`` at ``sigma``, in ``noisy``'s dtype.

        The transformer computes in its parameters' dtype (bf16 under ``bf16-true``), so a sampler
        can keep its state in fp32 and call a bf16 model, as diffusers' pipelines do.
        """
        hidden = self.conditioner(condition)
        self._check_inputs(noisy, hidden)
        dtype = self.transformer.patch_embedding.weight.dtype
        velocity = self.transformer(noisy.to(dtype), sigma * 1000.0, hidden.to(dtype), return_dict=False)[0]
        return velocity.to(noisy.dtype)

    def _check_inputs(self, noisy: torch.Tensor, hidden: torch.Tensor) -> None:
        """Name the component and both shapes, instead of a convolution's traceback deep in a run."""
        from jevons.framework.errors import ModelInputError

        channels, text_dim = self.transformer.config["in_channels"], self.transformer.config["text_dim"]
        if noisy.ndim != 5 or noisy.shape[1] != channels:
            space = "VAE latents" if self.codec is not None else "pixels"
            raise ModelInputError(
                f"the diffusion transformer's patch embedding (transformer.patch_embedding) takes {channels}-channel "
                f"samples (B, {channels}, F, H, W); the batch's {space} are {tuple(noisy.shape)}. Train on data with "
                f"{channels} channels (a latent model: data precomputed with its VAE, jevons data import latents), "
                f"or a model of the data's channels (model.channels, for a model trained from scratch)."
            )
        if hidden.shape[-1] != text_dim:
            raise ModelInputError(
                f"the diffusion transformer's text embedder (transformer.condition_embedder.text_embedder) takes "
                f"{text_dim}-wide conditioning; the conditioner gave {tuple(hidden.shape)}. Precompute the "
                f"embeddings with the pipeline's own text encoder."
            )

    def clean(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's clean samples in model space: precomputed latents, pixels encoded online, or pixels."""
        if "latents" in batch:
            return cast(torch.Tensor, batch["latents"]).float()
        video = cast(torch.Tensor, batch["video"])
        if self.codec is None:
            return video
        device = next(self.transformer.parameters()).device  # the codec follows the model to its device
        return self.codec.to(device).encode(video.to(device))

    def finish(self, samples: torch.Tensor) -> torch.Tensor:
        """A sampler's last step: pixels are clamped to [-1, 1]; latents are left as they are."""
        return samples if self.codec is not None else samples.clamp(-1.0, 1.0)

    def to_pixels(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples ``(B, C, F, H, W)`` as pixels in [-1, 1] (decoded through the VAE for a latent model)."""
        if self.codec is None:
            return samples.clamp(-1.0, 1.0)
        return self.codec.to(samples.device).decode(samples)

    def save_pretrained(self, directory: Path) -> None:
        """A diffusers transformer folder, plus the class table as safetensors when conditioned on labels."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.transformer.save_pretrained(directory / "transformer")
        if isinstance(self.conditioner, ClassConditioner):
            save_file(
                {"table": self.conditioner.table.weight.detach().contiguous()},
                str(directory / "conditioner.safetensors"),
            )

    @classmethod
    def from_pretrained(
        cls,
        directory: Path,
        tokens: int = 4,
        conditioner: Conditioner | None = None,
        codec: LatentCodec | None = None,
    ) -> DiffusionModel:
        """A Jevons export: its transformer and class table, or its transformer with ``conditioner``
        (a text-conditioned model shares its conditioner: nothing of it is trained) and ``codec``."""
        from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
        from safetensors.torch import load_file

        directory = Path(directory)
        transformer = WanTransformer3DModel.from_pretrained(directory / "transformer")
        if conditioner is None:
            weights = load_file(str(directory / "conditioner.safetensors"))["table"]  # (classes + 1, tokens * text_dim)
            table = ClassConditioner(transformer.config["text_dim"], tokens, classes=len(weights) - 1)
            table.table.weight.data.copy_(weights)
            conditioner = table
        return cls(transformer, conditioner, codec)


def build_transformer(cfg: DiffusionModelConfig) -> WanTransformer3DModel:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    from jevons.recipes.diffusion.components import transformer_folder

    folder = transformer_folder(cfg)
    if folder is not None:
        return WanTransformer3DModel.from_pretrained(str(folder), local_files_only=True)
    return WanTransformer3DModel(
        patch_size=tuple(cfg.patch_size),
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=cfg.rope_max_seq_len,
    )
