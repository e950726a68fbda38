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
    from jevons.recipes.mixed_modal.model import MixedModalDecoder


@dataclass
class MixedModalModelConfig(TransformerShapeConfig):
    max_seq_len: int = 96


@dataclass
class MixedModalDataConfig(DataConfig):
    source: str | list[str] = "captioned-digits"


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


@dataclass
class MixedModalConfig(Config):
    """A mixed_modal run's config: the framework's sections, ``model``, the extended ``data`` and ``generate``."""

    data: MixedModalDataConfig = field(default_factory=MixedModalDataConfig)
    model: MixedModalModelConfig = field(default_factory=MixedModalModelConfig)
    generate: MixedModalGenerateConfig = field(default_factory=MixedModalGenerateConfig)


class MixedModalFamily(FamilyBase[MixedModalConfig]):
    name = "mixed_modal"
    recipe_dir = Path(__file__).parent / "configs"
    config_class = MixedModalConfig
    capabilities = frozenset({"transformer", "token_sequences", "token_modalities"})
    parallelism = frozenset({"tensor", "shard"})
    weight_unit = "tokens"

    def validate(self, config: MixedModalConfig) -> None:
        check_heads(config.model, config.parallel.tensor)

    def data_sources(self) -> Iterable[DataSource]:
        from jevons.recipes.mixed_modal.data import CAPTIONED_DIGITS

        return (CAPTIONED_DIGITS,)

    def importers(self) -> Iterable[type[Importer[Any]]]:
        from jevons.recipes.mixed_modal.importer import MixedModalImageImporter

        return (MixedModalImageImporter,)

    def build_model(self, config: MixedModalConfig) -> torch.nn.Module:
        from jevons.framework.errors import UsageError
        from jevons.framework.tensor_parallel import pad_vocab_size
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
        return MixedModalDecoder(cfg.resolve(pad_vocab_size(vocabulary.size)), vocabulary.first_code, MODALITIES)

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        return [(f"layers.{i}.attn", layer.attn) for i, layer in enumerate(cast("MixedModalDecoder", model).blocks)]

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        """Each block's feed-forward; a replacement is called as ``ffn(x, context)`` (:class:`TokenContext`)."""
        return [(f"layers.{i}.ffn", i, layer.ffn) for i, layer in enumerate(cast("MixedModalDecoder", model).blocks)]

    def build_dataset(self, config: MixedModalConfig, split: str) -> MapDataset:
        from jevons.recipes.mixed_modal.data import CaptionedImages

        return self.blend(config, split, lambda folder: CaptionedImages.from_folder(folder, split, config.data))

    def check_blend(self, folders: list[Path]) -> None:
        from jevons.framework.data.blend import same_file
        from jevons.framework.errors import UsageError

        for name in ("vocab.json", "codebook.npy"):
            for folder in folders[1:]:
                if not same_file(folders[0] / name, folder / name):
                    raise UsageError(
                        f"data.source blends {folders[0]} and {folder}, whose {name} differ: a model has one "
                        f"vocabulary and codebook. Import the sources together in one import instead."
                    )

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float:
        from jevons.framework.tensor_parallel import tensor_parallel_size
        from jevons.recipes.llm.flops import decoder_train_flops

        rows, length = batch["input_ids"].shape
        return decoder_train_flops(cast("MixedModalDecoder", model).shape, rows, length, tensor_parallel_size())

    def default_objective(self, model: torch.nn.Module, config: MixedModalConfig) -> Objective:
        from jevons.recipes.mixed_modal.objective import MixedModalObjective

        return MixedModalObjective()

    def default_generator(self, model: torch.nn.Module, config: MixedModalConfig) -> Generator:
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
