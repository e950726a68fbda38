"""The llm family's model as a Hugging Face Llama checkpoint (``config.json`` + ``model.safetensors``).

The decoder is Llama's architecture (pre-norm RMSNorm, rotary embeddings
rotating half-dimensions, SwiGLU, no biases), so only the layout of two fused
projections differs: our QKV rows are ``(head, q|k|v, head_dim)`` and our
gate/up rows ``(unit, gate|up)``; Llama keeps separate ``q_proj``/``k_proj``/
``v_proj`` and ``gate_proj``/``up_proj``. Exported from a model built at TP=1
(a checkpoint saved at any TP size loads into it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from einops import rearrange

from jevons.recipes.llm.model import DecoderLM


def llama_config(model: DecoderLM, eos_token_id: int = 0) -> dict:
    shape = model.shape
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads,
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


def llama_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    """Our parameters under Llama's names, fused projections split."""
    shape = model.shape
    tensors = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    for i, layer in enumerate(model.blocks):
        prefix = f"model.layers.{i}."
        q, k, v = rearrange(layer.attn.qkv.weight, "(h three d) c -> three (h d) c", three=3, d=shape.head_dim)
        gate, up = rearrange(layer.ffn.gate_up.weight, "(f two) c -> two f c", two=2)
        tensors.update(
            {
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.o_proj.weight": layer.attn.proj.weight,
                prefix + "mlp.gate_proj.weight": gate,
                prefix + "mlp.up_proj.weight": up,
                prefix + "mlp.down_proj.weight": layer.ffn.down.weight,
                prefix + "input_layernorm.weight": layer.attn_norm.weight,
                prefix + "post_attention_layernorm.weight": layer.ffn_norm.weight,
            }
        )
    if model.head is not None:
        tensors["lm_head.weight"] = model.head.weight
    return {name: t.detach().to(torch.float32).contiguous().clone() for name, t in tensors.items()}


def export_llama(model: DecoderLM, tokenizer_json: Path, out_dir: Path) -> list[Path]:
    """Write the folder into a temporary sibling and rename it into place: never a half-written export."""
    from safetensors.torch import save_file

    from jevons.framework.tensor_parallel import tensor_parallel_size
    from jevons.recipes.llm.data import end_of_document, load_tokenizer

    if tensor_parallel_size() != 1:
        raise RuntimeError("export the llm from a model built at tensor parallel size 1 (jevons export does)")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another out= or remove it")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(llama_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
    eos_token, eos_id = end_of_document(load_tokenizer(Path(tokenizer_json).parent))  # an import's own tokenizer
    (staging / "config.json").write_text(json.dumps(llama_config(model, eos_id), indent=2) + "\n")
    shutil.copyfile(tokenizer_json, staging / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_token,
        "pad_token": eos_token,
        "model_max_length": model.shape.max_seq_len,
    }
    (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    staging.rename(out_dir)
    return sorted(out_dir.iterdir())
