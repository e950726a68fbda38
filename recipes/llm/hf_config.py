"""What a Hugging Face causal-LM folder's ``config.json`` says, as the llm family's ``model`` keys.

Three architectures are read: ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and
``MistralForCausalLM``. They share the decoder Jevons builds (pre-norm RMSNorm,
rotary embeddings, SwiGLU, grouped-query attention); Qwen2 adds biases to the
query, key and value projections, which its architecture implies (no config
field says so).

Both spellings of a config are read: released folders write ``rope_theta``,
``rope_scaling`` and ``torch_dtype``; transformers 5 writes ``rope_parameters``
and ``dtype``. A field the model cannot honour is a :class:`UsageError` naming
it: an unknown architecture, remote code, an activation other than SiLU, biases
Jevons does not build, a rope type it does not implement, and a sliding window
only where it would take effect (shorter than ``data.seq_len``).

No torch at import: the family reads this while validating a config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jevons.framework.errors import UsageError
from jevons.recipes.llm.shape import ROPE_TYPES, RopeScaling

QKV_BIAS = {"LlamaForCausalLM": False, "Qwen2ForCausalLM": True, "MistralForCausalLM": False}
"""The architectures read, and whether each has biases on Q, K and V."""
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PretrainedConfig:
    """A folder's architecture in Jevons' terms, and what generation and export need besides."""

    folder: Path
    architecture: str
    model_keys: dict[str, Any]
    """``model.*`` values: hidden_size, num_layers, num_heads, num_kv_heads, head_dim, ffn_hidden_size,
    max_seq_len, rope_theta, rope_scaling (a dict), norm_eps, init_std, tie_embeddings, qkv_bias."""
    vocab_size: int
    """The checkpoint's embedding rows (before any padding for TP)."""
    dtype: str
    """The dtype the weights are stored in (``torch_dtype`` / ``dtype``), e.g. ``bfloat16``."""
    eos_token_ids: tuple[int, ...]
    """Where generation stops: ``generation_config.json``'s ids, else ``config.json``'s."""
    raw: dict[str, Any]
    """``config.json`` as read, which an export writes back."""


def read_pretrained_config(folder: Path | str, seq_len: int | None = None) -> PretrainedConfig:
    """Read ``folder/config.json`` (and ``generation_config.json``), refusing what the model cannot honour;
    ``seq_len`` is the training window, checked against the model's positions and any sliding window."""
    folder = Path(folder).expanduser()
    path = folder / "config.json"
    if not path.is_file():
        what = "no such folder" if not folder.exists() else f"it holds {sorted(p.name for p in folder.iterdir())[:8]}"
        raise UsageError(
            f"model.pretrained={folder}: no config.json ({what}). Give a Hugging Face model folder "
            f"(config.json, model.safetensors or its index, tokenizer.json), e.g. one saved by save_pretrained."
        )
    raw = read_json_object(path)
    where = f"model.pretrained={folder}: config.json"
    if raw.get("auto_map") or raw.get("trust_remote_code"):
        raise UsageError(
            f"{where} asks for remote code (auto_map: {sorted(raw.get('auto_map') or {})}). Jevons never runs a "
            f"checkpoint's own Python (trust_remote_code); it builds {', '.join(QKV_BIAS)} itself."
        )
    architectures = raw.get("architectures") or []
    architecture = next((a for a in architectures if a in QKV_BIAS), None)
    if architecture is None:
        raise UsageError(
            f"{where} has architectures={architectures}; Jevons builds {', '.join(QKV_BIAS)}. Other decoders "
            f"need their own family or an issue."
        )
    _refuse_unsupported(raw, where)
    try:
        keys, vocab_size = _model_keys(raw, architecture, seq_len, where), int(raw["vocab_size"])
    except KeyError as error:
        raise UsageError(f"{where} has no {error.args[0]!r}, which a {architecture} config needs.") from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where} holds a value of the wrong kind ({error}).") from None
    dtype = str(raw.get("dtype") or raw.get("torch_dtype") or "float32").removeprefix("torch.")
    if dtype not in DTYPES:
        raise UsageError(f"{where} stores weights as {dtype!r}; Jevons reads {', '.join(DTYPES)}.")
    return PretrainedConfig(
        folder=folder,
        architecture=architecture,
        model_keys=keys,
        vocab_size=vocab_size,
        dtype=dtype,
        eos_token_ids=_eos_ids(folder, raw),
        raw=raw,
    )


def _model_keys(raw: dict[str, Any], architecture: str, seq_len: int | None, where: str) -> dict[str, Any]:
    """The ``model.*`` values of ``raw`` (a missing field raises KeyError, a malformed one TypeError/ValueError)."""
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    rope_theta, scaling = _rope(raw, where)
    positions = int(raw.get("max_position_embeddings") or 2048)
    if seq_len is not None:
        _check_length(raw, architecture, seq_len, positions, scaling, where)
    return {
        "hidden_size": hidden,
        "num_layers": int(raw["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(raw.get("num_key_value_heads") or heads),
        "head_dim": int(raw.get("head_dim") or hidden // heads),
        "ffn_hidden_size": int(raw["intermediate_size"]),
        "max_seq_len": positions,
        "rope_theta": rope_theta,
        "rope_scaling": scaling,
        "norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        "init_std": float(raw.get("initializer_range", 0.02)),
        "tie_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "qkv_bias": QKV_BIAS[architecture],
    }


def read_json_object(path: Path) -> dict[str, Any]:
    """A Hugging Face folder's JSON file (config.json, generation_config.json, tokenizer_config.json), which
    must hold an object; anything else is a UsageError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} holds a JSON {type(value).__name__}; expected an object.")
    return value


def _refuse_unsupported(raw: dict[str, Any], where: str) -> None:
    activation = raw.get("hidden_act", "silu")
    if activation != "silu":
        raise UsageError(f"{where} has hidden_act={activation!r}; the SwiGLU Jevons builds uses silu.")
    for name in ("attention_bias", "mlp_bias"):
        if raw.get(name):
            raise UsageError(f"{where} sets {name}=true; Jevons builds these projections without biases.")


def _rope(raw: dict[str, Any], where: str) -> tuple[float, dict[str, Any]]:
    """``(rope_theta, rope_scaling keys)`` from ``rope_parameters`` (transformers 5) or ``rope_theta`` and
    ``rope_scaling`` (released folders; older ones spell the type ``type``)."""
    parameters = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(parameters.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = parameters.pop("rope_type", parameters.pop("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UsageError(
            f"{where} has rope type {rope_type!r}; Jevons implements {', '.join(ROPE_TYPES)}. Fine-tune at the "
            f"original context instead, or open an issue for {rope_type}."
        )
    scaling: dict[str, Any] = {"rope_type": rope_type}
    if rope_type != "default":
        scaling["factor"] = float(parameters["factor"])
    if rope_type == "llama3":
        for name in ("low_freq_factor", "high_freq_factor"):
            scaling[name] = float(parameters[name])
        scaling["original_max_position_embeddings"] = int(parameters["original_max_position_embeddings"])
    RopeScaling(**scaling)  # its own checks, with the config's values
    return theta, scaling


def _check_length(
    raw: dict[str, Any], architecture: str, seq_len: int, positions: int, scaling: dict[str, Any], where: str
) -> None:
    if seq_len > positions:
        raise UsageError(
            f"data.seq_len={seq_len} is beyond the model's positions ({where} max_position_embeddings={positions}, "
            f"rope scaling {scaling['rope_type']}). Use data.seq_len<={positions}."
        )
    window = raw.get("sliding_window")
    # Qwen2's window is off unless use_sliding_window says otherwise (Qwen2Config's default); Mistral's is on when set.
    enabled = raw.get("use_sliding_window", False) if architecture == "Qwen2ForCausalLM" else window is not None
    if enabled and window and int(window) < seq_len:
        raise UsageError(
            f"{where} has sliding_window={window}, shorter than data.seq_len={seq_len}: Jevons attends over the "
            f"whole window, which would train a different model. Use data.seq_len<={window}."
        )


def _eos_ids(folder: Path, raw: dict[str, Any]) -> tuple[int, ...]:
    generation = folder / "generation_config.json"
    value = raw.get("eos_token_id")
    if generation.is_file():
        value = read_json_object(generation).get("eos_token_id", value)
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def check_tokenizer(pretrained: PretrainedConfig) -> None:
    """Refuse a folder without ``tokenizer.json``, or whose tokenizer has ids past the embedding's rows."""
    from tokenizers import Tokenizer

    path = pretrained.folder / "tokenizer.json"
    if not path.is_file():
        raise UsageError(
            f"model.pretrained={pretrained.folder} has no tokenizer.json: generation, sampling and data import "
            f"use the model's own tokenizer. Save it beside the model (tokenizer.save_pretrained(dir))."
        )
    size = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    if size > pretrained.vocab_size:
        raise UsageError(
            f"{path} has {size} tokens but the checkpoint's embedding has {pretrained.vocab_size} rows "
            f"(config.json vocab_size): ids past it have no embedding. Use the tokenizer saved with the model."
        )
