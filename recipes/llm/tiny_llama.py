"""A tiny random-initialised Hugging Face causal LM folder: what ``recipe=llama_sft_tiny`` starts from.

``python -m jevons.recipes.llm.tiny_llama OUT`` writes a ``LlamaForCausalLM`` folder
with Llama 3.2's features at toy sizes (grouped-query attention with 4 query and
2 key/value heads, tied embeddings, Llama-3 rope scaling, bfloat16 weights), a
byte-level BPE tokenizer trained on standard-library docstrings with a Llama-3
style chat template, and a ``generation_config.json`` with two end-of-sequence
ids, as Llama 3's has. ``architecture=qwen2|mistral`` writes those instead (the
tests' other two). Everything goes through transformers' own config classes and
``save_pretrained``, the code path a user's released folder took; the same seed
writes the same weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from jevons.framework.family import DataSource

ARCHITECTURES = ("llama", "qwen2", "mistral")
SIZES = {
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def tiny_config(architecture: str, vocab_size: int, **overrides: Any) -> Any:
    """A transformers config of ``architecture`` at the tiny sizes (Llama: tied, Llama-3 rope scaling);
    ``overrides`` change any size or other field."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    sizes: dict[str, Any] = {**SIZES, "vocab_size": vocab_size}
    sizes.update({key: overrides.pop(key) for key in list(overrides) if key in sizes})
    if architecture == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
        return LlamaConfig(**sizes, tie_word_embeddings=True, rope_parameters=rope, **overrides)
    if architecture == "qwen2":
        return Qwen2Config(**sizes, tie_word_embeddings=False, **overrides)
    if architecture == "mistral":
        return MistralConfig(**sizes, tie_word_embeddings=False, sliding_window=4096, **overrides)
    raise ValueError(f"architecture={architecture!r}: one of {', '.join(ARCHITECTURES)}")


def write_tiny_llm(
    out: Path, architecture: str = "llama", seed: int = 0, dtype: str = "bfloat16", **overrides: Any
) -> Path:
    """Write the folder to ``out`` (staged under a temporary name, then renamed); returns ``out``."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_into(staging, architecture, seed, dtype, **overrides)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def write_into(
    folder: Path, architecture: str = "llama", seed: int = 0, dtype: str = "bfloat16", **overrides: Any
) -> None:
    """Write the folder's files into ``folder``, which exists and is empty."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from jevons.recipes.llm.stdlib_pairs import signature_docstring_pairs
    from jevons.recipes.llm.tiny_tokenizer import CHATML_TEMPLATE, LLAMA3_STYLE_TEMPLATE, write_tokenizer_folder

    pairs = signature_docstring_pairs(limit=2000)
    texts = [text for pair in pairs for text in (pair["prompt"], pair["response"])]
    template = LLAMA3_STYLE_TEMPLATE if architecture == "llama" else CHATML_TEMPLATE
    tokenizer = write_tokenizer_folder(folder, texts, chat_template=template)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    config = tiny_config(architecture, vocab, **overrides)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # transformers zeroes biases and sets gains to one: give every tensor a value
        for param in model.parameters():
            param.normal_(0.0, 0.05) if param.ndim > 1 else param.uniform_(0.5, 1.5)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    end_ids = [i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")) if i is not None]
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=sorted(set(end_ids)), do_sample=True, temperature=0.6
    ).save_pretrained(folder)


def build_tiny_llama(directory: Path, progress: bool) -> None:
    """The built-in ``llm-tiny-llama`` (:data:`TINY_LLAMA_SOURCE`): the Llama folder, seed 0."""
    write_into(directory, "llama", seed=0)


TINY_LLAMA_SOURCE = DataSource(
    name="llm-tiny-llama",
    description="a tiny random Llama 3.2-style Hugging Face folder (GQA, tied, Llama-3 rope), for model.pretrained",
    build=build_tiny_llama,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_llm(args.out, args.architecture, args.seed))


if __name__ == "__main__":
    main()
