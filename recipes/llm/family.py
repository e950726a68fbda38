"""The ``llm`` family: a decoder-only transformer trained on next-token prediction.

Data: CPython's own prose (documentation topics and standard-library
docstrings), byte-level BPE-tokenised, generated on first use (``jevons data
llm-prose``). A user's
own corpus is a folder holding ``train.json``/``val.json`` shard indexes of
``tokens.npy`` documents plus the ``tokenizer.json`` that made them
(``data.source=/path/to/folder``).

This module stays light (no torch at import): the family object is created
while plugins load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from jevons.framework.config.schema import DataConfig
from jevons.framework.family import DataSource, EvalContext, FamilyBase

if TYPE_CHECKING:
    import torch

    from jevons.framework.config.schema import Config


@dataclass
class LLMModelConfig:
    vocab_size: int | None = None
    """Null takes the data's tokenizer size; it is padded to split evenly over TP ranks."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_size: int | None = None
    """Null gives SwiGLU's 8/3 x hidden_size, rounded up to a multiple of 32 (Llama's sizing)."""
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    """Share the token embedding with the output head (GPT-2 style)."""


@dataclass
class LLMDataConfig(DataConfig):
    source: str = "llm-prose"
    seq_len: int = 128
    """Tokens per training window; documents are cut into windows of this length."""


@dataclass
class LLMGenerateConfig:
    """What each validation writes to ``samples/``."""

    prompts: list[str] = field(default_factory=lambda: ['The "assert" statement', "A function definition"])
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 40


class LLMFamily(FamilyBase):
    name = "llm"
    recipe_dir = Path(__file__).parent / "configs"
    config_sections: ClassVar[Mapping[str, type]] = {
        "model": LLMModelConfig,
        "data": LLMDataConfig,
        "generate": LLMGenerateConfig,
    }
    capabilities = frozenset({"transformer", "token_sequences"})
    parallelism = frozenset({"tensor"})
    weight_unit = "tokens"

    def validate(self, config: Config) -> None:
        from jevons.framework.errors import UsageError

        cfg, tp = config.model, config.parallel.tensor
        if cfg.hidden_size % cfg.num_heads:
            raise UsageError(
                f"model.hidden_size={cfg.hidden_size} must be a multiple of model.num_heads={cfg.num_heads}."
            )
        if cfg.num_heads % tp:
            raise UsageError(
                f"parallel.tensor={tp} must divide model.num_heads={cfg.num_heads}: tensor parallelism splits whole "
                f"attention heads across ranks. Use a tensor size among {_divisors(cfg.num_heads)}."
            )
        if cfg.ffn_hidden_size and cfg.ffn_hidden_size % tp:
            raise UsageError(f"parallel.tensor={tp} must divide model.ffn_hidden_size={cfg.ffn_hidden_size}.")
        if config.data.seq_len > cfg.max_seq_len:
            raise UsageError(f"data.seq_len={config.data.seq_len} exceeds model.max_seq_len={cfg.max_seq_len}.")

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.llm.data import PROSE_SOURCE

        return (PROSE_SOURCE,)

    def data_dir(self, config: Config) -> Path:
        from jevons.framework.data.cache import data_root, resolve_source

        return resolve_source(config.data.source, data_root(config.data.root), {s.name: s for s in self.data_sources()})

    def build_model(self, config: Config) -> torch.nn.Module:
        from jevons.framework.tensor_parallel import pad_vocab_size
        from jevons.recipes.llm.data import load_tokenizer
        from jevons.recipes.llm.model import DecoderLM, TransformerShape

        cfg = config.model
        vocab = cfg.vocab_size or load_tokenizer(self.data_dir(config)).get_vocab_size()
        ffn = cfg.ffn_hidden_size or 32 * math.ceil(8 * cfg.hidden_size / 3 / 32)
        shape = TransformerShape(
            vocab_size=pad_vocab_size(vocab),
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            ffn_hidden_size=ffn,
            max_seq_len=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            norm_eps=cfg.norm_eps,
            init_std=cfg.init_std,
            tie_embeddings=cfg.tie_embeddings,
        )
        return DecoderLM(shape)

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        return [(f"layers.{i}.attn", layer.attn) for i, layer in enumerate(model.layers)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        return [(f"layers.{i}.ffn", i, layer.ffn) for i, layer in enumerate(model.layers)]

    def build_dataset(self, config: Config, split: str) -> Any:
        from jevons.recipes.llm.data import TokenWindows

        return TokenWindows.from_folder(self.data_dir(config), split, config.data)

    def default_objective(self, model: torch.nn.Module, config: Config) -> Any:
        from jevons.recipes.llm.objective import NextTokenObjective

        return NextTokenObjective()

    def default_generator(self, model: torch.nn.Module, config: Config) -> Any:
        from jevons.recipes.llm.data import load_tokenizer
        from jevons.recipes.llm.generate import TextGenerator

        return TextGenerator(model, load_tokenizer(self.data_dir(config)))

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        from jevons.recipes.llm.evaluate import evaluate

        return evaluate(context, self.data_dir(context.config))

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """Options: ``prompt``, ``max_new_tokens``, ``temperature``, ``top_k``, ``seed``."""
        from jevons.framework.errors import UsageError

        known = {"prompt", "max_new_tokens", "temperature", "top_k", "seed"}
        unknown = set(options) - known
        if unknown:
            raise UsageError(
                f"Unknown sample option(s) {', '.join(sorted(unknown))} for family llm; options: {', '.join(sorted(known))}."
            )
        cfg = run.config.generate
        prompts = [options["prompt"]] if "prompt" in options else cfg.prompts
        texts = run.generator(
            prompts,
            max_new_tokens=int(options.get("max_new_tokens", cfg.max_new_tokens)),
            temperature=float(options.get("temperature", cfg.temperature)),
            top_k=int(options.get("top_k", cfg.top_k)),
            seed=int(options.get("seed", 0)),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step_{run.step:08d}.txt"
        path.write_text("\n\n---\n\n".join(texts) + "\n")
        print("\n\n---\n\n".join(texts))
        return [path]

    def export(self, run: Any, out_dir: Path) -> list[Path]:
        """A Hugging Face Llama folder (``LlamaForCausalLM.from_pretrained`` loads it) with the tokenizer."""
        from jevons.recipes.llm.export import export_llama

        return export_llama(run.model, self.data_dir(run.config) / "tokenizer.json", out_dir)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
