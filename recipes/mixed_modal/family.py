"""The ``mixed_modal`` family: an early-fusion decoder trained on captioned images, in both directions.

Data: scikit-learn's digits, drawn with varied size, stroke, tilt, position
and noise, with captions that say so (``jevons data captioned-digits``);
images are 64 tokens of 2 x 2-patch k-means codes. One decoder predicts the
next token of ``caption -> image`` and ``image -> caption`` sequences; each
token carries its modality in the model's forward context, which the
``modality_experts`` plugin routes by. Validation reports loss and perplexity
per modality, writes images generated from captions (a PNG grid) and captions
generated from held-out images.

This module stays light (no torch at import).
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
class MixedModalModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_size: int | None = None
    """Null gives SwiGLU's 8/3 x hidden_size, rounded up to a multiple of 32."""
    max_seq_len: int = 96
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False


@dataclass
class MixedModalDataConfig(DataConfig):
    source: str = "captioned-digits"


@dataclass
class MixedModalGenerateConfig:
    """What each validation writes to ``samples/``."""

    captions: list[str] = field(
        default_factory=lambda: [
            "a thick handwritten seven , slightly tilted to the left",
            "the small digit two , in the top left corner",
            "a thin zero , upright , in the middle",
            "a bold four , on a noisy background",
            "the large digit 3 , tilted to the right",
        ]
    )
    """Captions to draw images from: one row of the PNG grid each (words of the data's vocabulary)."""
    images_per_caption: int = 6
    temperature: float = 1.0
    top_k: int = 0
    caption_images: int = 32
    """Held-out images to caption (greedy); their digit accuracy is ``val/caption_digit_accuracy``."""


class MixedModalFamily(FamilyBase):
    name = "mixed_modal"
    recipe_dir = Path(__file__).parent / "configs"
    config_sections: ClassVar[Mapping[str, type]] = {
        "model": MixedModalModelConfig,
        "data": MixedModalDataConfig,
        "generate": MixedModalGenerateConfig,
    }
    capabilities = frozenset({"transformer", "token_sequences", "token_modalities"})
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
                f"parallel.tensor={tp} must divide model.num_heads={cfg.num_heads}: tensor parallelism "
                f"splits whole attention heads across ranks."
            )
        if cfg.ffn_hidden_size and cfg.ffn_hidden_size % tp:
            raise UsageError(f"parallel.tensor={tp} must divide model.ffn_hidden_size={cfg.ffn_hidden_size}.")

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.mixed_modal.data import CAPTIONED_DIGITS

        return (CAPTIONED_DIGITS,)

    def data_dir(self, config: Config) -> Path:
        from jevons.framework.data.cache import data_root, resolve_source

        return resolve_source(config.data.source, data_root(config.data.root), {s.name: s for s in self.data_sources()})

    def build_model(self, config: Config) -> torch.nn.Module:
        from jevons.framework.errors import UsageError
        from jevons.framework.tensor_parallel import pad_vocab_size
        from jevons.recipes.llm.model import TransformerShape
        from jevons.recipes.mixed_modal.data import load_vocabulary
        from jevons.recipes.mixed_modal.model import MixedModalDecoder
        from jevons.recipes.mixed_modal.tokens import MODALITIES

        cfg = config.model
        vocabulary = load_vocabulary(self.data_dir(config))
        longest = int(self.build_dataset(config, "train").lengths.max()) - 1
        if longest > cfg.max_seq_len:
            raise UsageError(
                f"model.max_seq_len={cfg.max_seq_len} is shorter than the data's longest sequence "
                f"({longest} input tokens); raise it to at least {longest}."
            )
        shape = TransformerShape(
            vocab_size=pad_vocab_size(vocabulary.size),
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            ffn_hidden_size=cfg.ffn_hidden_size or 32 * math.ceil(8 * cfg.hidden_size / 3 / 32),
            max_seq_len=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            norm_eps=cfg.norm_eps,
            init_std=cfg.init_std,
            tie_embeddings=cfg.tie_embeddings,
        )
        return MixedModalDecoder(shape, vocabulary.first_code, MODALITIES)

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        return [(f"layers.{i}.attn", layer.attn) for i, layer in enumerate(model.layers)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        """Each block's feed-forward; a replacement is called as ``ffn(x, context)`` (:class:`TokenContext`)."""
        return [(f"layers.{i}.ffn", i, layer.ffn) for i, layer in enumerate(model.layers)]

    def build_dataset(self, config: Config, split: str) -> Any:
        from jevons.recipes.mixed_modal.data import CaptionedImages

        return CaptionedImages.from_folder(self.data_dir(config), split, config.data)

    def default_objective(self, model: torch.nn.Module, config: Config) -> Any:
        from jevons.recipes.mixed_modal.objective import MixedModalObjective

        return MixedModalObjective()

    def default_generator(self, model: torch.nn.Module, config: Config) -> Any:
        from jevons.recipes.mixed_modal.data import load_codebook, load_vocabulary
        from jevons.recipes.mixed_modal.generate import MixedModalGenerator

        folder = self.data_dir(config)
        return MixedModalGenerator(model, load_vocabulary(folder), load_codebook(folder))

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        from jevons.recipes.mixed_modal.evaluate import evaluate

        return evaluate(context, self.data_dir(context.config))

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """Options: ``caption`` (draw images of it), ``count`` (images per caption), ``temperature``, ``seed``."""
        from jevons.framework.errors import UsageError
        from jevons.recipes.mixed_modal.evaluate import save_image_grid

        known = {"caption", "count", "temperature", "seed"}
        unknown = set(options) - known
        if unknown:
            raise UsageError(
                f"Unknown sample option(s) {', '.join(sorted(unknown))} for family mixed_modal; "
                f"options: {', '.join(sorted(known))}."
            )
        cfg = run.config.generate
        captions = [options["caption"]] if "caption" in options else list(cfg.captions)
        count = int(options.get("count", cfg.images_per_caption))
        try:
            images = run.generator.images(
                captions,
                per_caption=count,
                temperature=float(options.get("temperature", cfg.temperature)),
                top_k=cfg.top_k,
                seed=int(options.get("seed", 0)),
            )
        except ValueError as error:  # a word outside the vocabulary
            raise UsageError(
                f"caption {captions!r}: {error}. The vocabulary is in {self.data_dir(run.config) / 'vocab.json'}."
            ) from None
        out_dir.mkdir(parents=True, exist_ok=True)
        return [save_image_grid(images, count, out_dir / f"step_{run.step:08d}_images.png")]
