"""The llm family's model as a Hugging Face folder: ``config.json``, ``model.safetensors``, the tokenizer.

A model trained from a released folder (``model.pretrained=DIR``) exports as that
architecture (Llama, Qwen2, Mistral): its ``config.json`` written back as read, the
weights in the folder's own dtype (float32 parameters convert back exactly, so an
untrained import gives the original tensors bitwise), the vocabulary padding cut,
and the folder's tokenizer, chat template and generation config copied beside them.
A model of Jevons' own exports as a float32 ``LlamaForCausalLM`` (``Qwen2ForCausalLM``
with QKV biases), its rope scaling written in both spellings, with the data's
tokenizer. Chat data's template goes beside either: the one the model was trained with. Names are mapped by :mod:`jevons.recipes.llm.hf_weights`. Exported from
a model built at TP=1 (a checkpoint saved at any TP size loads into it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

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
    """A transformers ``config.json`` for a decoder trained from scratch: ``LlamaForCausalLM``, or
    ``Qwen2ForCausalLM`` when it has QKV biases (Qwen2 is Llama with them); its rope scaling in both spellings."""
    shape = model.shape
    scaling = {k: v for k, v in asdict(shape.rope_scaling).items() if v is not None}
    architecture, model_type = ("Qwen2ForCausalLM", "qwen2") if shape.qkv_bias else ("LlamaForCausalLM", "llama")
    config = {
        "architectures": [architecture],
        "model_type": model_type,
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
        "rope_theta": shape.rope_theta,  # the released spelling (transformers 4)...
        "rope_scaling": scaling if shape.rope_scaling.rope_type != "default" else None,
        "rope_parameters": {**scaling, "rope_theta": shape.rope_theta},  # ...and transformers 5's
        "tie_word_embeddings": shape.tie_embeddings,
        "initializer_range": shape.init_std,
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }
    if shape.qkv_bias:
        config["use_sliding_window"] = False
    else:
        config.update(attention_bias=False, mlp_bias=False)
    return config


def export_hf(
    model: DecoderLM,
    out_dir: Path,
    tokenizer_json: Path,
    pretrained: PretrainedConfig | None = None,
    chat_template: Path | None = None,
) -> list[Path]:
    """Write the folder into a temporary sibling and rename it into place: never a half-written export.
    ``chat_template`` (a chat data folder's ``chat_template.jinja``: the template the model was trained with)
    is written as the export's, over any the pretrained folder had."""
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
    try:
        if pretrained is not None:
            tensors = hf_state_dict(model, pretrained.vocab_size, getattr(torch, pretrained.dtype))
            (staging / "config.json").write_text(json.dumps(pretrained.raw, indent=2) + "\n")
            for name in TOKENIZER_FILES:
                if (pretrained.folder / name).is_file():
                    shutil.copyfile(pretrained.folder / name, staging / name)
        else:
            tensors = hf_state_dict(model, model.shape.vocab_size, torch.float32)
            _write_own_config(model, Path(tokenizer_json), staging)
        if chat_template is not None:
            shutil.copyfile(chat_template, staging / "chat_template.jinja")
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def export_peft_adapter(model: DecoderLM, out_dir: Path, base: Path | None) -> list[Path]:
    """The model's LoRA adapters as a peft adapter folder over the Hugging Face export's names
    (``PeftModel.from_pretrained(base, out_dir)`` loads it): ``adapter_config.json`` and
    ``adapter_model.safetensors``. The fused ``gate_up`` adapter becomes one adapter on each of
    ``gate_proj`` and ``up_proj``, sharing ``A``; ``B`` holds the scaling (``lora_alpha`` = r), so every
    loader computes the same update whatever it does with alpha."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from jevons.framework.adapters import lora_factors
    from jevons.framework.errors import UsageError
    from jevons.recipes.llm.hf_weights import name_table

    factors = lora_factors(model)
    if not factors:
        raise UsageError("The model has no LoRA adapters to export.")
    table = name_table(model)
    tensors: dict[str, torch.Tensor] = {}
    unmapped = sorted(name for name in factors if name + ".weight" not in table or name.endswith(("embed", "head")))
    if unmapped:
        raise UsageError(
            f"Adapters on {', '.join(unmapped)} have no place in a peft adapter over the Hugging Face names "
            f"(adapt the attention and FFN projections); `jevons export` without adapter=true writes them merged."
        )
    for ours, (lora_a, lora_b, scaling) in factors.items():
        theirs = [name.removesuffix(".weight") for name in table[ours + ".weight"]]
        parts = list(rearrange(lora_b, "(f two) r -> two f r", two=2)) if len(theirs) == 2 else [lora_b]
        for module, part in zip(theirs, parts, strict=True):
            tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a.float().contiguous().clone()
            tensors[f"base_model.model.{module}.lora_B.weight"] = (part.float() * scaling).contiguous().clone()
    ranks = {a.shape[0] for a, _, _ in factors.values()}
    if len(ranks) != 1:
        raise UsageError(f"Adapters of different ranks {sorted(ranks)} cannot share one adapter_config.json.")
    rank = ranks.pop()
    targets = sorted({key.split(".")[-3] for key in tensors})
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=targets,
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base) if base else None,
    )
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config.save_pretrained(str(staging))
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(out_dir)
    return sorted(out_dir.iterdir())
