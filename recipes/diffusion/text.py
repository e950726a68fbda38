"""Prompts to text embeddings the way ``diffusers.WanPipeline`` makes them, from a local folder.

A transformers tokenizer and encoder (``UMT5EncoderModel`` for Wan,
``T5EncoderModel``; CLIP's ``CLIPTextModel`` too) are loaded from local
folders only (``local_files_only``, never ``trust_remote_code``). A prompt is
cleaned with diffusers' own ``prompt_clean`` (HTML unescaped, whitespace
collapsed, ftfy when installed), tokenised to ``max_length`` with the
attention mask, encoded, trimmed at the mask and zero-padded back to
``max_length``: exactly the ``prompt_embeds`` WanPipeline hands its
transformer, so a Jevons sample and the exported pipeline's agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

TEXT_ENCODERS = ("UMT5EncoderModel", "T5EncoderModel", "CLIPTextModel")


def load_text_encoder(folder: Path, dtype: torch.dtype | None = None) -> Any:
    """The encoder saved in ``folder`` (its ``config.json`` names the class), from local files only."""
    import json

    import transformers

    from jevons.framework.errors import UsageError

    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise UsageError(f"text encoder folder {folder} has no config.json (expected a transformers save_pretrained).")
    config = json.loads(config_path.read_text())
    if config.get("auto_map"):
        raise UsageError(
            f"text encoder {folder} asks for custom code (auto_map in config.json); Jevons never runs "
            f"trust_remote_code. Use a folder of one of {', '.join(TEXT_ENCODERS)}."
        )
    names = config.get("architectures") or []
    name = next((n for n in names if n in TEXT_ENCODERS), None)
    if name is None:
        raise UsageError(
            f"text encoder {folder} is {names or 'unnamed'} (config.json 'architectures'); Jevons reads "
            f"{', '.join(TEXT_ENCODERS)}."
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return getattr(transformers, name).from_pretrained(str(folder), **kwargs).eval().requires_grad_(False)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    from jevons.framework.errors import UsageError

    if not Path(folder).is_dir():
        raise UsageError(f"tokenizer folder {folder} does not exist.")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


class PromptEncoder:
    """``embed(prompts, max_length)``: ``(B, max_length, text_dim)`` float embeddings, as WanPipeline's."""

    def __init__(self, tokenizer: Any, encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder

    @classmethod
    def from_folders(cls, tokenizer: Path, encoder: Path, dtype: torch.dtype | None = None) -> PromptEncoder:
        return cls(load_tokenizer(tokenizer), load_text_encoder(encoder, dtype))

    @property
    def width(self) -> int:
        return int(
            self.encoder.config.d_model if hasattr(self.encoder.config, "d_model") else self.encoder.config.hidden_size
        )

    def trimmed(
        self, prompts: Sequence[str], max_length: int, device: torch.device | str = "cpu"
    ) -> list[torch.Tensor]:
        """Each prompt's embedding up to its last real token: ``[(length_i, text_dim), ...]``."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        inputs = self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        lengths = inputs.attention_mask.gt(0).sum(dim=1).tolist()
        self.encoder.to(device)
        with torch.no_grad():
            states = self.encoder(inputs.input_ids.to(device), inputs.attention_mask.to(device)).last_hidden_state
        return [state[:length] for state, length in zip(states, lengths)]

    def embed(self, prompts: Sequence[str], max_length: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return pad_embeddings(self.trimmed(prompts, max_length, device), max_length)


def pad_embeddings(trimmed: Sequence[torch.Tensor], max_length: int) -> torch.Tensor:
    """Zero-pad trimmed ``(length_i, D)`` embeddings to ``(B, max_length, D)`` (longer ones are cut)."""
    width = trimmed[0].shape[-1]
    out = trimmed[0].new_zeros((len(trimmed), max_length, width))
    for row, embedding in enumerate(trimmed):
        length = min(len(embedding), max_length)
        out[row, :length] = embedding[:length]
    return out
