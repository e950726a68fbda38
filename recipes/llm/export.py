"""The llm family's model as a Hugging Face folder: ``config.json``, ``model.safetensors``, the tokenizer.

A model trained from a released folder (``model.pretrained=DIR``) exports as that
architecture (Llama, Qwen2, Mistral): its ``config.json`` written back as read, the
weights in the folder's own dtype (float32 parameters convert back exactly, so an
untrained import gives the original tensors bitwise), the vocabulary padding cut,
and the folder's tokenizer, chat template and generation config copied beside them.
A model of Jevons' own exports as a float32 ``LlamaForCausalLM`` with the data's
tokenizer. Names are mapped by :mod:`jevons.recipes.llm.hf_weights`. Exported from
a model built at TP=1 (a checkpoint saved at any TP size loads into it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from jevons.recipes.llm.hf_config import PretrainedConfig
from jevons.recipes.llm.hf_weights import hf_state_dict
from jevons.recipes.llm.model import DecoderLM

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
"""What a released folder keeps beside its weights, copied into an export when present."""


def llama_config(model: DecoderLM, eos_token_id: int = 0) -> dict[str, Any]:
    shape = model.shape
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_seq_len,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": shape.init_std,
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }


def export_hf(
    model: DecoderLM, out_dir: Path, tokenizer_json: Path, pretrained: PretrainedConfig | None = None
) -> list[Path]:
    """Write the folder into a temporary sibling and rename it into place: never a half-written export."""
    from safetensors.torch import save_file

    from jevons.framework.tensor_parallel import tensor_parallel_size

    if tensor_parallel_size() != 1:
        raise RuntimeError("export the llm from a model built at tensor parallel size 1 (jevons export does)")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another out= or remove it")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if pretrained is not None:
        tensors = hf_state_dict(model, pretrained.vocab_size, getattr(torch, pretrained.dtype))
        (staging / "config.json").write_text(json.dumps(pretrained.raw, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (pretrained.folder / name).is_file():
                shutil.copyfile(pretrained.folder / name, staging / name)
    else:
        tensors = hf_state_dict(model, model.shape.vocab_size, torch.float32)
        _write_own_config(model, Path(tokenizer_json), staging)
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    staging.rename(out_dir)
    return sorted(out_dir.iterdir())


def _write_own_config(model: DecoderLM, tokenizer_json: Path, staging: Path) -> None:
    from jevons.recipes.llm.data import end_of_document, load_tokenizer

    eos_token, eos_id = end_of_document(load_tokenizer(tokenizer_json.parent))  # an import's own tokenizer
    (staging / "config.json").write_text(json.dumps(llama_config(model, eos_id), indent=2) + "\n")
    shutil.copyfile(tokenizer_json, staging / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_token,
        "pad_token": eos_token,
        "model_max_length": model.shape.max_seq_len,
    }
    (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
