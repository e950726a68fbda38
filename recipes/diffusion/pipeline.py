"""A released diffusers pipeline folder as the diffusion family's model, and its VAE as a latent codec.

A folder with ``model_index.json`` (``Wan2.1-T2V-1.3B-Diffusers``, or a
``jevons export``) names its components: ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``. :class:`PipelineFolder`
finds each (a per-component override in the config wins) and refuses, by
name, what Jevons does not run: a class outside :data:`SUPPORTED`, a config
asking for custom code. Weights load with diffusers' and transformers'
``from_pretrained`` from local files only: safetensors, or a ``.bin``
through ``torch.load(weights_only=True)``, which refuses pickled code.

:class:`LatentCodec` wraps the VAE: ``encode`` maps pixels in [-1, 1] to
latents normalised with the VAE config's per-channel mean and std (Wan:
``(z - latents_mean) / latents_std``; an image ``AutoencoderKL``:
``(z - shift_factor) * scaling_factor``), ``decode`` inverts both, as
``WanPipeline`` decodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jevons.framework.errors import UsageError

SUPPORTED = {
    "transformer": ("WanTransformer3DModel",),
    "vae": ("AutoencoderKLWan", "AutoencoderKL"),
    "text_encoder": ("UMT5EncoderModel", "T5EncoderModel", "CLIPTextModel"),
    "scheduler": ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler"),
}
"""The classes each component may be (the tokenizer: any transformers tokenizer)."""


@dataclass(frozen=True)
class PipelineFolder:
    """A diffusers pipeline folder: ``model_index.json`` and one subfolder per component."""

    root: Path
    index: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> PipelineFolder | None:
        """The pipeline at ``path``, or None when it has no ``model_index.json`` (a bare transformer folder)."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UsageError(f"model.pretrained={path} is not a folder (nothing is downloaded: give a local path).")
        index_path = root / "model_index.json"
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
        except ValueError as error:
            raise UsageError(f"{index_path} is not valid JSON ({error}).") from error
        folder = cls(root, index)
        for name in SUPPORTED:
            if name in index and index[name] and index[name][0] is not None:
                folder.class_name(name)  # refuses an unsupported class now, naming it
        return folder

    def class_name(self, component: str) -> str | None:
        entry = self.index.get(component)
        if not entry or entry[1] is None:
            return None
        name = str(entry[1])
        allowed = SUPPORTED.get(component)
        if allowed is not None and name not in allowed:
            raise UsageError(
                f"{self.root / 'model_index.json'}: {component} is {name}; Jevons' diffusion family runs "
                f"{', '.join(allowed)}."
            )
        return name

    def component(self, name: str) -> Path | None:
        """The folder of component ``name`` if the pipeline has one."""
        path = self.root / name
        return path if self.class_name(name) and path.is_dir() else None

    def scheduler_config(self) -> dict[str, Any] | None:
        path = self.root / "scheduler" / "scheduler_config.json"
        if self.class_name("scheduler") is None or not path.is_file():
            return None
        config: dict[str, Any] = json.loads(path.read_text())
        config.setdefault("_class_name", self.class_name("scheduler"))
        return config


def component_config(folder: Path, component: str) -> dict[str, Any]:
    """A component folder's ``config.json``, refused if it asks for custom code or names another class."""
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"{component} folder {folder} has no config.json (expected a save_pretrained folder).")
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("auto_map"):
        raise UsageError(
            f"{path} asks for custom code (auto_map); Jevons never runs trust_remote_code. Use a folder of "
            f"one of {', '.join(SUPPORTED[component])}."
        )
    name = config.get("_class_name") or next(iter(config.get("architectures") or []), None)
    if name not in SUPPORTED[component]:
        raise UsageError(f"{path}: {component} is {name}; Jevons runs {', '.join(SUPPORTED[component])}.")
    return config


def load_vae(folder: Path, dtype: torch.dtype | None = None) -> Any:
    import diffusers

    name = component_config(folder, "vae")["_class_name"]
    vae = getattr(diffusers, name).from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    return vae.eval().requires_grad_(False)


class LatentCodec:
    """Pixels ``(B, 3, F, H, W)`` in [-1, 1] to normalised latents ``(B, C, F', H', W')`` and back."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        config = vae.config
        self.video = type(vae).__name__ == "AutoencoderKLWan"
        if self.video:
            self.channels = int(config.z_dim)
            self.temporal = int(config.scale_factor_temporal)
            self.spatial = int(config.scale_factor_spatial)
            self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
            self.scale = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        else:
            self.channels = int(config.latent_channels)
            self.temporal = 1
            self.spatial = 2 ** (len(config.block_out_channels) - 1)
            self.mean = torch.full((1, 1, 1, 1, 1), float(config.shift_factor or 0.0))
            self.scale = torch.full((1, 1, 1, 1, 1), float(config.scaling_factor))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of a clip: Wan keeps the first frame and packs each next ``temporal`` into one."""
        if (frames - 1) % self.temporal or height % self.spatial or width % self.spatial:
            raise UsageError(
                f"{frames} frames of {width}x{height} do not fit the VAE: frames must be {self.temporal}k + 1 "
                f"and the sides multiples of {self.spatial}."
            )
        return (self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    def to(self, device: torch.device | str) -> LatentCodec:
        """Move the VAE (a no-op where it is already)."""
        if next(self.vae.parameters()).device != torch.device(device):
            self.vae.to(device)
        return self

    def _device(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.vae.parameters())
        return parameter.device, parameter.dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior's mean (deterministic: a rerun of a precompute writes the same latents), normalised."""
        device, dtype = self._device()
        x = pixels.to(device, dtype)
        if self.video:
            latents = self.vae.encode(x).latent_dist.mode()
        else:  # an image VAE: frames are images
            batch, _, frames = x.shape[:3]
            flat = x.transpose(1, 2).flatten(0, 1)
            latents = self.vae.encode(flat).latent_dist.mode()
            latents = latents.unflatten(0, (batch, frames)).transpose(1, 2)
        return (latents.float() - self.mean.to(device)) * self.scale.to(device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (clamped), ``(B, 3, F, H, W)``."""
        device, dtype = self._device()
        z = (latents.to(device).float() / self.scale.to(device) + self.mean.to(device)).to(dtype)
        if self.video:
            pixels = self.vae.decode(z, return_dict=False)[0]
        else:
            batch, _, frames = z.shape[:3]
            pixels = self.vae.decode(z.transpose(1, 2).flatten(0, 1), return_dict=False)[0]
            pixels = pixels.unflatten(0, (batch, frames)).transpose(1, 2)
        return pixels.float().clamp(-1.0, 1.0)
