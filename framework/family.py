"""The Family protocol: what a recipe family provides to the framework.

A family (``llm``, ``diffusion``, ``speech``, ``mixed_modal`` or a third
party's) is one object registered through the ``register_recipes`` hook. The
framework knows no model: it asks the family to build one, to list the modules
plugins may replace, to build map-style datasets with per-sample lengths, and
for the default objective, generator and evaluation. See ``docs/families.md``.

A family declares its config as a type: ``config_class``, a dataclass
subclass of :class:`~jevons.framework.config.schema.Config` whose added (or
narrowed) fields are the family's sections with their defaults. ``Family`` and
``FamilyBase`` are generic in that class, so ``LLMFamily(FamilyBase[LLMConfig])``
annotates ``build_model(self, config: LLMConfig)`` and a type checker follows
``config.model.hidden_size``; the framework holds families as ``Family[Any]``.

Subclass :class:`FamilyBase` to get the optional parts with sensible defaults.
Keep the module that defines the family (and its config classes) light (no
torch at import time): the family is constructed while plugins load, before the
config is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch

    from jevons.framework.config.schema import Config
    from jevons.framework.data.importing import Importer
    from jevons.framework.objective import Objective
    from jevons.framework.protocols import Generator, MapDataset

ConfigT = TypeVar("ConfigT", bound="Config")
"""A family's config class: :class:`~jevons.framework.config.schema.Config` and the family's sections."""


@dataclass(frozen=True)
class DataSource:
    """A built-in dataset the family can generate with no download.

    :param name: the name for ``jevons data NAME`` (e.g. ``"llm-prose"``).
    :param description: one line for listings.
    :param build: ``build(directory, progress)`` writes the dataset's shards,
        index and any side files (tokenizer) into ``directory``, which is
        empty and is renamed into place only when ``build`` returns.
    :param version: bump when the output changes, so caches are rebuilt.
    """

    name: str
    description: str
    build: Callable[[Path, bool], None]
    version: int = 1


@dataclass
class EvalContext:
    """Everything a family's ``evaluate`` gets at the end of a validation.

    :param model: the model being trained (in eval mode, no grad).
    :param generator: the run's generator (plugin's or the family default).
    :param config: the run config.
    :param run_dir: the run directory; samples go under ``run_dir / "samples"``.
    :param step: the global training step.
    :param is_rank_zero: only rank zero writes files.
    :param tensorboard: a ``SummaryWriter`` or ``None``.
    :param metrics: this validation's aggregated metrics (``val/loss``...).
    :param artifacts: files ``evaluate`` wrote; the run summary lists them.
    """

    model: Any
    generator: Any
    config: Any
    run_dir: Path
    step: int
    is_rank_zero: bool = True
    tensorboard: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


@runtime_checkable
class Family(Protocol[ConfigT]):
    """A recipe family, generic in its config class. Attributes and methods, in the order the build uses them."""

    name: str
    """Unique family name; recipes say ``family: <name>``."""

    @property
    def recipe_dir(self) -> Path | None:
        """Directory of ``*.yaml`` recipes shipped with the family, or None (a class attribute will do)."""

    config_class: type[ConfigT]
    """The family's config: a dataclass subclass of :class:`~jevons.framework.config.schema.Config`
    whose fields add the family's sections (``model: ModelConfig = field(default_factory=ModelConfig)``)
    or narrow the framework's (``data`` to a subclass of
    :class:`~jevons.framework.config.schema.DataConfig`). Its defaults are the composition's
    defaults; the run's config is an instance of a subclass of it (plus plugin and launcher sections)."""

    capabilities: frozenset[str]
    """What the family's model offers to plugins (``"attention_processors"``,
    ``"token_modalities"``...); plugins may require capabilities."""

    weight_unit: str
    """What an objective's ``weight`` counts (``"tokens"``, ``"samples"``): throughput is reported in it."""

    parallelism: frozenset[str]
    """Which of ``tensor``, ``sequence``, ``pipeline``, ``context``, ``expert``, ``shard``
    (FSDP2 over the data-parallel ranks) and ``ulysses`` (sequence split over ranks) its model
    implements (data parallelism always works); larger sizes of the others are refused."""

    def validate(self, config: ConfigT) -> None:
        """Check the family's sections against the whole config (e.g. heads divisible by TP);
        raise UsageError. Called at config time: no torch."""

    def data_sources(self) -> Iterable[DataSource]:
        """Built-in datasets this family can generate (``jevons data NAME``)."""

    def importers(self) -> Iterable[type[Importer[Any]]]:
        """The kinds of users' files this family imports (``jevons data import KIND ...``): one
        :class:`~jevons.framework.data.importing.Importer` subclass per kind. Where two families take
        one kind, the one whose importer sets ``default_for_kind`` answers unless ``family=`` says."""

    def build_model(self, config: ConfigT) -> torch.nn.Module:
        """Build the model, tensor-parallel-aware from the start."""

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        """``(qualified_name, module)`` for each module ``replace_attention`` may replace."""

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        """``(qualified_name, layer_index, module)`` for each module ``replace_ffn`` may replace."""

    def build_dataset(self, config: ConfigT, split: str) -> MapDataset:
        """A map-style dataset with ``lengths`` (one or two per sample) and ``collate``."""

    def default_objective(self, model: torch.nn.Module, config: ConfigT) -> Objective:
        """The objective used when no plugin answers ``make_objective``."""

    def default_generator(self, model: torch.nn.Module, config: ConfigT) -> Generator:
        """The generator used when no plugin answers ``make_generator``."""

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float | None:
        """Model FLOPs of one training step on ``batch`` on this rank, forward and backward, counted
        analytically with :class:`~jevons.framework.flops.TrainFlops` (None: not counted, no MFU)."""

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        """Write samples for ``context.step`` and return extra validation metrics."""

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """``jevons sample run_dir=... key=value``: write samples of a loaded run; return the files."""

    def export(self, run: Any, out_dir: Path) -> list[Path]:
        """``jevons export run_dir=...``: write a loaded run's model in its ecosystem's format (a
        folder another library loads); return the files. A LoRA run's adapters are merged first."""

    def export_adapter(self, run: Any, out_dir: Path) -> list[Path]:
        """``jevons export run_dir=... adapter=true``: write a LoRA run's adapters alone, in the layout
        the family's ecosystem loads onto its base model; return the files."""


class FamilyBase(Generic[ConfigT]):
    """Defaults for the optional parts of :class:`Family`, and helpers every family uses.

    A subclass names its config class twice, once for the type checker and once at run time:
    ``class LLMFamily(FamilyBase[LLMConfig]): config_class = LLMConfig``.
    """

    name: str = ""
    recipe_dir: Path | None = None
    config_class: type[ConfigT]
    capabilities: frozenset[str] = frozenset()
    parallelism: frozenset[str] = frozenset()
    weight_unit: str = "samples"

    def validate(self, config: ConfigT) -> None:
        """Check the family's sections against the whole config at config time (no torch here)."""

    def data_sources(self) -> Iterable[DataSource]:
        return ()

    def importers(self) -> Iterable[type[Importer[Any]]]:
        return ()

    def data_dir(self, config: ConfigT) -> Path:
        """The folder ``config.data.source`` names: one of :meth:`data_sources` (built into the
        data cache on first use) or a user's folder of shard indexes. For a blend of several, the
        first: the one whose tokenizer, vocabulary or channels the model takes."""
        return self.data_dirs(config)[0][0]

    def data_dirs(self, config: ConfigT) -> list[tuple[Path, float | None]]:
        """Every folder of ``config.data.source`` with its blend weight (``[DIR_A:0.7, DIR_B:0.3]``;
        None: by size)."""
        from jevons.framework.data.blend import parse_sources
        from jevons.framework.data.cache import data_root, resolve_source

        sources = {source.name: source for source in self.data_sources()}
        root = data_root(config.data.root)
        return [(resolve_source(name, root, sources), weight) for name, weight in parse_sources(config.data.source)]

    def blend(self, config: ConfigT, split: str, build: Callable[[Path], MapDataset]) -> MapDataset:
        """``build(folder)`` for the one folder of ``data.source``, or the weighted
        :class:`~jevons.framework.data.blend.BlendedDataset` of several (after :meth:`check_blend`)."""
        folders = self.data_dirs(config)
        if len(folders) == 1:
            return build(folders[0][0])
        from jevons.framework.data.blend import BlendedDataset

        self.check_blend([folder for folder, _ in folders])
        datasets = [build(folder) for folder, _ in folders]
        names = [str(folder) for folder, _ in folders]
        return BlendedDataset(datasets, [weight for _, weight in folders], names, seed=config.seed)

    def check_blend(self, folders: list[Path]) -> None:
        """Raise UsageError if ``folders`` cannot be blended (e.g. different tokenizers)."""

    def attention_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module]]:
        return ()

    def ffn_modules(self, model: torch.nn.Module) -> Iterable[tuple[str, int, torch.nn.Module]]:
        return ()

    def train_flops(self, model: torch.nn.Module, batch: dict[str, Any]) -> float | None:
        return None

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        return {}

    def sample(self, run: Any, out_dir: Path, options: dict[str, str]) -> list[Path]:
        """``jevons sample``: write samples from a loaded run (``LoadedRun``) into ``out_dir``."""
        from jevons.framework.errors import UsageError

        raise UsageError(f"Family '{self.name}' does not implement `jevons sample`.")

    def export(self, run: Any, out_dir: Path) -> list[Path]:
        """``jevons export``: write a loaded run's model for another library to load."""
        from jevons.framework.errors import UsageError

        raise UsageError(f"Family '{self.name}' does not implement `jevons export`.")

    def export_adapter(self, run: Any, out_dir: Path) -> list[Path]:
        """``jevons export adapter=true``: a LoRA run's adapters alone, for another library to load."""
        from jevons.framework.errors import UsageError

        raise UsageError(
            f"Family '{self.name}' cannot export adapters alone; `jevons export` without adapter=true writes the "
            f"merged model."
        )


@dataclass(frozen=True)
class RecipeDirectory:
    """Extra recipes for existing families: ``register(RecipeDirectory(path))``.

    Each ``*.yaml`` in ``path`` must say which family it belongs to
    (``family: llm``).
    """

    path: Path
