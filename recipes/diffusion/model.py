"""The diffusion family's model: a diffusers ``WanTransformer3DModel`` and a learned class conditioner.

The transformer *is* a diffusers model (Wan 2.1's architecture: patchified
3-D video tokens, self-attention with 3-D RoPE, cross-attention to the text
tokens), so it saves with ``save_pretrained`` and loads with
``from_pretrained``; images are one-frame videos. Conditioning reaches it
through ``encoder_hidden_states``: here from :class:`ClassConditioner`, a
learned table of ``tokens`` vectors per digit class (and one "no digit"
entry, which is also the unconditional input for classifier-free guidance);
a real text encoder takes its place in full-size recipes.

Shapes: video ``(B, C, F, H, W)``; labels ``(B, 2)`` (one or two digits, the
second possibly "none"); conditioning ``(B, 2 * tokens, text_dim)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock

    from jevons.recipes.diffusion.family import DiffusionModelConfig

NUM_LABELS = 11  # ten digits and "no digit", which doubles as the unconditional input


class ClassConditioner(nn.Module):
    """Labels ``(B, 2)`` to encoder hidden states ``(B, 2 * tokens, text_dim)``."""

    def __init__(self, text_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.table = nn.Embedding(NUM_LABELS, tokens * text_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        batch = labels.shape[0]
        return self.table(labels).reshape(batch, labels.shape[1] * self.tokens, -1)


class DiffusionModel(nn.Module):
    """``transformer(x_t, t * 1000, conditioner(labels))``: the velocity of rectified flow."""

    def __init__(self, transformer: WanTransformer3DModel, conditioner: ClassConditioner) -> None:
        super().__init__()
        self.transformer = transformer
        self.conditioner = conditioner

    @property
    def blocks(self) -> list[WanTransformerBlock]:
        """The transformer's blocks, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("list[WanTransformerBlock]", list(self.transformer.blocks))

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = self.conditioner(labels)
        return self.transformer(noisy, sigma * 1000.0, condition, return_dict=False)[0]

    def save_pretrained(self, directory: Path) -> None:
        """A diffusers transformer folder, plus the conditioner's table as safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.transformer.save_pretrained(directory / "transformer")
        save_file(
            {"table": self.conditioner.table.weight.detach().contiguous()}, str(directory / "conditioner.safetensors")
        )

    @classmethod
    def from_pretrained(cls, directory: Path, tokens: int) -> DiffusionModel:
        from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
        from safetensors.torch import load_file

        directory = Path(directory)
        transformer = WanTransformer3DModel.from_pretrained(directory / "transformer")
        conditioner = ClassConditioner(transformer.config["text_dim"], tokens)
        conditioner.table.weight.data.copy_(load_file(str(directory / "conditioner.safetensors"))["table"])
        return cls(transformer, conditioner)


def build_transformer(cfg: DiffusionModelConfig) -> WanTransformer3DModel:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    if cfg.pretrained:
        return WanTransformer3DModel.from_pretrained(cfg.pretrained, subfolder=cfg.pretrained_subfolder or None)
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
