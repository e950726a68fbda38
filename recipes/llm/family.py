"""The ``llm`` family: a decoder-only transformer trained on next-token prediction.

Data: CPython's own prose (documentation topics and standard-library
docstrings), byte-level BPE-tokenised, generated on first use (``jevons data
llm-prose``). A user's own corpus is imported with ``jevons data import text
FILES... out=DIR`` (:mod:`jevons.recipes.llm.importer`, docs/data.md) and trained
on with ``data.source=DIR``: the folder's ``train.json``/``val.json`` shard
indexes of ``tokens.npy`` documents plus the ``tokenizer.json`` that made them.

This module stays light (no torch at import): the family object is created
while plugins load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from jevons.framework.config.schema import Config, DataConfig
from jevons.framework.family import DataSource, EvalContext, FamilyBase
from jevons.recipes.llm.shape import TransformerShapeConfig, check_heads

if TYPE_CHECKING:
    import torch

    from jevons.framework.data.importing import Importer
    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator, MapDataset
    from jevons.recipes.llm.model import DecoderLM


@dataclass
class LLMModelConfig(TransformerShapeConfig):
    vocab_size: int | None = None
    """Null takes the data's tokenizer size; it is padded to split evenly over TP ranks."""
    pretrained: str | None = None
    """A Hugging Face folder (Llama, Qwen2, Mistral: config.json, safetensors, tokenizer.json) to start from.
    Its config.json sets every shape key above (written into the run's config.yaml); its weights are
    read per tensor-parallel rank; its tokenizer drives generation and must be the data's. ``llm-tiny-llama``
    names a built-in tiny Llama folder, made into the data cache on first use."""


@dataclass
class LLMDataConfig(DataConfig):
    source: str | list[str] = "llm-prose"
    seq_len: int = 128
    """Tokens per training window; documents are cut into windows of this length."""
    packing: bool = False
    """Instruction data (``jevons data import chat``): pack whole examples into rows of seq_len, attention
    kept within each example, instead of one padded example per row."""


@dataclass
class LLMGenerateConfig:
    """What each validation writes to ``samples/``."""

    prompts: list[str] = field(default_factory=lambda: ['The "assert" statement', "A function definition"])
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 40


@dataclass
class LLMConfig(Config):
    """An llm run's config: the framework's sections, ``model``, the extended ``data`` and ``generate``."""

    data: LLMDataConfig = field(default_factory=LLMDataConfig)
    model: LLMModelConfig = field(default_factory=LLMModelConfig)
    generate: LLMGenerateConfig = field(default_factory=LLMGenerateConfig)


class LLMFamily(FamilyBase[LLMConfig]):
    name = "llm"
    recipe_dir = Path(__file__).parent / "configs"
    config_class = LLMConfig
    capabilities = frozenset({"transformer", "token_sequences"})
    parallelism = frozenset({"tensor", "shard"})
    weight_unit = "tokens"

    def validate(self, config: LLMConfig) -> None:
        from jevons.framework.errors import UsageError

        if config.model.pretrained:
            config.model.pretrained = str(self.pretrained_dir(config))
            adopt_pretrained(config)
        check_heads(config.model, config.parallel.tensor)
        if config.data.seq_len > config.model.max_seq_len:
            raise UsageError(
                f"data.seq_len={config.data.seq_len} exceeds model.max_seq_len={config.model.max_seq_len}."
            )

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.llm.data import PROSE_SOURCE
        from jevons.recipes.llm.stdlib_pairs import STDLIB_CHAT_SOURCE
        from jevons.recipes.llm.tiny_llama import TINY_LLAMA_SOURCE

        return (PROSE_SOURCE, STDLIB_CHAT_SOURCE, TINY_LLAMA_SOURCE)

    def pretrained_dir(self, config: LLMConfig) -> Path:
        """The folder ``model.pretrained`` names: a user's Hugging Face folder, or a built-in one of
        :meth:`data_sources` (``llm-tiny-llama``, built into the data cache on first use)."""
        from jevons.framework.data.cache import data_root, ensure_built

        assert config.model.pretrained is not None
        sources = {source.name: source for source in self.data_sources()}
        if config.model.pretrained in sources:
            return ensure_built(sources[config.model.pretrained], data_root(config.data.root))
        return Path(config.model.pretrained).expanduser()

    def importers(self) -> Iterable[type[Importer[Any]]]:
        from jevons.recipes.llm.chat_importer import ChatImporter
        from jevons.recipes.llm.importer import TextImporter

        return (TextImporter, ChatImporter)

    def build_model(self, config: LLMConfig) -> torch.nn.Module:
        from jevons.framework.errors import UsageError
        from jevons.framework.tensor_parallel import pad_vocab_size
        from jevons.recipes.llm.data import load_tokenizer
        from jevons.recipes.llm.model import DecoderLM

        cfg = config.model
        if cfg.pretrained:
            from jevons.recipes.llm.pretrained import build_pretrained, check_data_tokenizer

            check_data_tokenizer(self.data_dir(config), Path(cfg.pretrained))  # a blend's agree (check_blend)
            return build_pretrained(cfg.pretrained, config.data.seq_len)
        data_vocab = load_tokenizer(self.data_dir(config)).get_vocab_size()
        if cfg.vocab_size is not None and cfg.vocab_size < data_vocab:
            raise UsageError(
                f"model.vocab_size={cfg.vocab_size} is smaller than the data's tokenizer ({data_vocab} tokens, "
                f"{self.data_dir(config) / 'tokenizer.json'}): set model.vocab_size=null to take the tokenizer's."
            )
        vocab = cfg.vocab_size or data_vocab
        return DecoderLM(cfg.resolve(pad_vocab_size(vocab)), vocab_size=vocab)

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        return [(f"layers.{i}.attn", layer.attn) for i, layer in enumerate(cast("DecoderLM", model).blocks)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        return [(f"layers.{i}.ffn", i, layer.ffn) for i, layer in enumerate(cast("DecoderLM", model).blocks)]

    def build_dataset(self, config: LLMConfig, split: str) -> MapDataset:
        from jevons.recipes.llm.data import TokenWindows, is_chat
        from jevons.recipes.llm.sft_data import ChatExamples

        def dataset(folder: Path) -> MapDataset:
            if is_chat(folder):
                return ChatExamples.from_folder(folder, split, config.data)
            return TokenWindows.from_folder(folder, split, config.data)

        return self.blend(config, split, dataset)

    def check_blend(self, folders: list[Path]) -> None:
        from jevons.framework.data.blend import same_file
        from jevons.framework.errors import UsageError

        for folder in folders[1:]:
            if not same_file(folders[0] / "tokenizer.json", folder / "tokenizer.json"):
                raise UsageError(
                    f"data.source blends {folders[0]} and {folder}, whose tokenizer.json differ: import every "
                    f"source with the same tokenizer (jevons data import text ... tokenizer={folders[0]})."
                )

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float:
        from jevons.framework.tensor_parallel import tensor_parallel_size
        from jevons.recipes.llm.flops import decoder_train_flops

        rows, length = batch["input_ids"].shape
        return decoder_train_flops(cast("DecoderLM", model).shape, rows, length, tensor_parallel_size())

    def default_objective(self, model: torch.nn.Module, config: LLMConfig) -> Objective:
        from jevons.recipes.llm.objective import NextTokenObjective

        return NextTokenObjective()

    def default_generator(self, model: torch.nn.Module, config: LLMConfig) -> Generator:
        from jevons.recipes.llm.chat_template import read_chat_template
        from jevons.recipes.llm.data import is_chat, load_tokenizer
        from jevons.recipes.llm.generate import TextGenerator

        data_dir = self.data_dir(config)
        tokenizer_folder = Path(config.model.pretrained) if config.model.pretrained else data_dir
        tokenizer = load_tokenizer(tokenizer_folder)
        stop_ids: tuple[int, ...] = ()
        if config.model.pretrained:
            from jevons.recipes.llm.hf_config import read_pretrained_config

            stop_ids = read_pretrained_config(tokenizer_folder).eos_token_ids
        template = None
        if is_chat(data_dir):  # the template the examples were rendered with (the import copied it)
            template = read_chat_template(data_dir, lambda token: tokenizer.token_to_id(token) is not None)
        return TextGenerator(model, tokenizer, stop_ids=stop_ids, chat_template=template)

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
        """A Hugging Face folder (``AutoModelForCausalLM.from_pretrained`` loads it) with the tokenizer: the
        pretrained folder's architecture and dtype, else a float32 Llama (Qwen2 with QKV biases); a chat data
        folder's template beside it."""
        from jevons.recipes.llm.data import is_chat
        from jevons.recipes.llm.export import export_hf
        from jevons.recipes.llm.hf_config import read_pretrained_config

        pretrained = run.config.model.pretrained
        source = read_pretrained_config(pretrained) if pretrained else None
        data_dir = self.data_dir(run.config)
        template = data_dir / "chat_template.jinja" if is_chat(data_dir) else None  # what it was trained with
        return export_hf(run.model, out_dir, data_dir / "tokenizer.json", source, template)

    def export_adapter(self, run: Any, out_dir: Path) -> list[Path]:
        """A peft adapter folder over the Hugging Face export's names (``PeftModel.from_pretrained`` on the
        pretrained folder, or on the base's own export, loads it)."""
        from jevons.recipes.llm.export import export_peft_adapter

        pretrained = run.config.model.pretrained
        return export_peft_adapter(run.model, out_dir, Path(pretrained) if pretrained else None)


def adopt_pretrained(config: LLMConfig) -> None:
    """Fill ``config.model``'s shape keys from the pretrained folder's config.json (refusing what it cannot
    honour), so config.yaml records the model that was trained. The folder wins over a key the recipe or
    command line set, and says so on stderr."""
    import sys
    from dataclasses import replace

    from jevons.recipes.llm.hf_config import check_tokenizer, read_pretrained_config
    from jevons.recipes.llm.shape import RopeScaling

    assert config.model.pretrained is not None
    pretrained = read_pretrained_config(config.model.pretrained, config.data.seq_len)
    check_tokenizer(pretrained)
    keys = {**pretrained.model_keys, "vocab_size": pretrained.vocab_size}
    keys["rope_scaling"] = RopeScaling(**keys["rope_scaling"])
    defaults = LLMModelConfig()
    changed = [  # keys the recipe or command line set, which the folder's config.json overrules
        f"model.{key}={value!r} (not {getattr(config.model, key)!r})"
        for key, value in keys.items()
        if getattr(config.model, key) != value and getattr(config.model, key) != getattr(defaults, key)
    ]
    if changed:
        print(f"jevons: model.pretrained={pretrained.folder} sets {', '.join(changed)}", file=sys.stderr, flush=True)
    config.model = replace(config.model, **keys)
