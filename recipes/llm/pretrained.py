"""Building the llm family's decoder from a Hugging Face folder (``model.pretrained=DIR``).

The model is built on the meta device from ``config.json`` (no memory, no
initialisation) and then filled from the folder's safetensors, each
tensor-parallel rank reading only its own blocks
(:func:`jevons.recipes.llm.hf_weights.load_hf_weights`): a rank's memory grows
by its share of the model plus one tensor, never by a full copy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jevons.framework.errors import UsageError
from jevons.framework.tensor_parallel import pad_vocab_size
from jevons.framework.weights import WeightFiles
from jevons.recipes.llm.hf_config import PretrainedConfig, read_pretrained_config
from jevons.recipes.llm.hf_weights import load_hf_weights
from jevons.recipes.llm.model import DecoderLM
from jevons.recipes.llm.shape import RopeScaling, TransformerShape, TransformerShapeConfig


def pretrained_shape(pretrained: PretrainedConfig) -> TransformerShape:
    """The decoder's shape from the folder's config, the vocabulary padded for the current TP size."""
    keys = dict(pretrained.model_keys)
    keys["rope_scaling"] = RopeScaling(**keys["rope_scaling"])
    return TransformerShapeConfig(**keys).resolve(pad_vocab_size(pretrained.vocab_size))


def build_pretrained(folder: Path | str, seq_len: int | None = None) -> DecoderLM:
    """The decoder of ``folder``, its weights loaded for this TP rank (float32 parameters; the folder's
    dtype converts exactly, so an export in that dtype gives the tensors back bitwise)."""
    pretrained = read_pretrained_config(folder, seq_len)
    files = WeightFiles.find(pretrained.folder)
    with torch.device("meta"):
        model = DecoderLM(pretrained_shape(pretrained), vocab_size=pretrained.vocab_size)
    load_hf_weights(model, files, f"model.pretrained={pretrained.folder}")
    return model


def check_data_tokenizer(data_folder: Path, pretrained_folder: Path) -> None:
    """Refuse data tokenised with another tokenizer than the model's: its ids would mean other tokens."""
    from jevons.framework.data.blend import same_file

    if not same_file(data_folder / "tokenizer.json", pretrained_folder / "tokenizer.json"):
        raise UsageError(
            f"data.source={data_folder} was tokenised with another tokenizer than model.pretrained="
            f"{pretrained_folder}'s. Import the data with the model's: jevons data import text|chat ... "
            f"tokenizer={pretrained_folder}."
        )
