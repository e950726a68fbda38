"""Step 2 of a run: compose the config with Hydra's Compose API, then validate it.

The primary config holds every registered section's defaults (the family's
``config_class``, which holds the framework's sections and the family's, and
every plugin's), so any default can be overridden with ``a.b=c``; the
``recipe`` group holds every registered recipe (package ``_global_``, so a
recipe's keys land at the top level) and the ``launcher`` group every
launcher's schema. Recipes are put in Hydra's ConfigStore rather than on its
search path so that two plugins shipping the same recipe name is an error
naming both, instead of one silently shadowing the other.

Nothing here imports torch or writes to disk: a mistake is a
:class:`UsageError` in about a second.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import asdict, field, make_dataclass
from typing import Any

from jevons.framework.config.schema import Config
from jevons.framework.config.validate import to_dataclass
from jevons.framework.errors import PluginError, UsageError, did_you_mean, format_choices
from jevons.framework.plugin_manager import PluginManager

PRIMARY = "jevons"


def recipe_name(overrides: Sequence[str]) -> str | None:
    """The NAME of ``recipe=NAME`` among the overrides, if any."""
    for override in overrides:
        if override.startswith("recipe="):
            return override.split("=", 1)[1]
    return None


def compose_config(manager: PluginManager, overrides: Sequence[str]) -> Config:
    """Compose, validate and ``configure`` a run's config from ``recipe=NAME key=value ...``."""
    from jevons.launch import LAUNCHER_SCHEMAS

    name = recipe_name(overrides)
    if not name:
        raise UsageError(f"No recipe given: use 'train recipe=NAME'. Recipes: {format_choices(manager.recipes)}.")
    if name not in manager.recipes:
        raise UsageError(
            f"Unknown recipe '{name}'.{did_you_mean(name, manager.recipes)} Recipes: {format_choices(manager.recipes)}."
        )
    family = manager.family(manager.recipes[name].family)

    sections = {section: reg.value for section, reg in manager.config_sections.items()}
    raw = _compose(manager, family.config_class, sections, LAUNCHER_SCHEMAS, _open_keys(overrides))
    raw["recipe"] = name
    return validate_config(manager, raw)


def validate_config(manager: PluginManager, raw: dict[str, Any]) -> Config:
    """Type-check a composed config (plain data), check plugins and layout, run ``configure``.

    Also what loads a run's saved ``config.yaml`` (:func:`load_run_config`).
    """
    from jevons.launch import LAUNCHER_SCHEMAS

    family = manager.family(str(raw.get("family", "")))
    sections = {section: reg.value for section, reg in manager.config_sections.items()}
    launcher_name = raw.get("launcher", {}).get("name", "local")
    if launcher_name not in LAUNCHER_SCHEMAS:
        raise UsageError(
            f"launcher.name={launcher_name!r}: unknown launcher. Launchers: {format_choices(LAUNCHER_SCHEMAS)}."
        )
    enabled = raw.get("plugins") or []
    if not isinstance(enabled, list) or not all(isinstance(p, str) for p in enabled):
        raise UsageError(f"plugins={enabled!r} must be a list of plugin names, e.g. plugins=[muon].")
    manager.check_enabled(enabled, family)

    # Sections of plugins that are not enabled are checked, then left out of the run.
    for section, schema in sections.items():
        try:
            if section not in enabled and section in raw:
                to_dataclass(schema, raw.pop(section), section)
            elif section in raw:
                to_dataclass(schema, raw[section], section)
        except TypeError as error:  # a schema the validator cannot read: the plugin's bug, not the user's
            registered = manager.config_sections[section]
            raise PluginError(registered.plugin, registered.source, error) from None
    schema = run_schema(
        family.config_class, {s: sections[s] for s in enabled if s in sections}, LAUNCHER_SCHEMAS[launcher_name]
    )
    config = to_dataclass(schema, raw, "")
    recipe = manager.recipes.get(config.recipe)
    if recipe is not None and recipe.family != family.name:
        raise UsageError(f"family={config.family!r}: recipe '{config.recipe}' belongs to family '{recipe.family}'.")
    check_model_parallel(config.parallel, config.launcher.world_size)
    check_family_parallelism(config.parallel, family)
    if config.parallel.shard > 1 and config.trainer.compile:
        raise UsageError(
            f"trainer.compile=true with parallel.shard={config.parallel.shard}: compiling sharded blocks is not "
            "supported yet (FSDP's gather hooks would be traced into each block's graph). Use one of the two."
        )
    family.validate(config)
    manager.call_all("configure", enabled, config=config)
    return config


def load_run_config(manager: PluginManager, run_dir: Any) -> Config:
    """A run's resolved ``config.yaml``, validated against what is installed now."""
    from pathlib import Path

    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run directory: it has no config.yaml.")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise UsageError(f"{path} is not a Jevons config.")
    return validate_config(manager, raw)


def check_family_parallelism(parallel: Any, family: Any) -> None:
    """Refuse a parallelism the family's model does not implement, instead of silently ignoring it."""
    asked = {
        "tensor": parallel.tensor > 1,
        "pipeline": parallel.pipeline > 1,
        "context": parallel.context > 1,
        "expert": parallel.expert > 1,
        "sequence": parallel.sequence,
        "shard": parallel.shard > 1,
        "ulysses": parallel.ulysses > 1,
    }
    missing = [kind for kind, on in asked.items() if on and kind not in getattr(family, "parallelism", frozenset())]
    if missing:
        supported = ", ".join(sorted(family.parallelism)) or "none"
        raise UsageError(
            f"Family '{family.name}' does not implement {', '.join(missing)} parallelism (it implements: {supported}; "
            f"data parallelism always works). Set parallel.{missing[0]} back to its default."
        )


def check_model_parallel(parallel: Any, world_size: int) -> None:
    """Model-parallel sizes must divide the launcher's world (checked again, with CUDA limits, at launch),
    and ``shard`` (x ``replicate``) must split the data-parallel ranks that are left."""
    model_parallel = model_parallel_size(parallel)
    if model_parallel > world_size or world_size % model_parallel:
        raise UsageError(
            f"parallel.tensor={parallel.tensor} x pipeline={parallel.pipeline} x context={parallel.context} "
            f"x ulysses={parallel.ulysses} = {model_parallel} does not divide the world of {world_size} process(es) "
            f"the launcher starts. Use launcher.nproc (or launcher.nodes x tasks per node) that is a multiple of "
            f"{model_parallel}."
        )
    if parallel.ulysses > 1 and (parallel.shard > 1 or parallel.context > 1):
        raise UsageError(
            f"parallel.ulysses={parallel.ulysses} with parallel.shard={parallel.shard} or context={parallel.context}: "
            "Ulysses composes with tensor and data parallelism (DDP) only, for now."
        )
    data_parallel = world_size // model_parallel
    if parallel.shard == 1:
        if parallel.replicate not in (None, 1, data_parallel):
            raise UsageError(
                f"parallel.replicate={parallel.replicate} without parallel.shard: the {data_parallel} data-parallel "
                f"rank(s) are all replicas already. Set parallel.shard too (replicate x shard = {data_parallel})."
            )
        return
    replicate = parallel.replicate if parallel.replicate is not None else data_parallel // max(1, parallel.shard)
    if replicate * parallel.shard != data_parallel:
        raise UsageError(
            f"parallel.replicate={replicate} x shard={parallel.shard} = {replicate * parallel.shard} does not equal "
            f"the {data_parallel} data-parallel rank(s): {world_size} process(es) / (tensor={parallel.tensor} x "
            f"pipeline={parallel.pipeline} x context={parallel.context} x ulysses={parallel.ulysses}). "
            f"Choose shard (x replicate) = {data_parallel}, "
            f"or launcher.nproc = {model_parallel} x {parallel.shard} x {parallel.replicate or 1}."
        )


def model_parallel_size(parallel: Any) -> int:
    """Ranks that work on one sample: tensor x pipeline x context x Ulysses."""
    return int(parallel.tensor * parallel.pipeline * parallel.context * parallel.ulysses)


def data_parallel_layout(parallel: Any, world_size: int) -> tuple[int, int]:
    """``(replicate, shard)`` of the data-parallel ranks (``(dp, 1)`` without sharding)."""
    data_parallel = world_size // model_parallel_size(parallel)
    if parallel.shard == 1:
        return data_parallel, 1
    return data_parallel // parallel.shard, parallel.shard


def run_schema(family_config: type[Config], plugin_sections: dict[str, type], launcher: type) -> type:
    """The run's Config class: the family's ``config_class`` (framework and family sections) with the
    enabled plugins' sections and the launcher's added, so a run's config is an instance of the family's."""
    extra = {**plugin_sections, "launcher": launcher}
    fields = [(key, schema, field(default_factory=schema)) for key, schema in extra.items()]
    return make_dataclass("Config", fields, bases=(family_config,), namespace={"__module__": __name__})


def _compose(
    manager: PluginManager,
    family_config: type[Config],
    plugin_sections: dict[str, type],
    launchers: dict[str, type],
    overrides: Sequence[str],
) -> dict[str, Any]:
    from hydra import compose, initialize
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    defaults: dict[str, Any] = asdict(family_config())
    del defaults["launcher"]
    for section, section_schema in plugin_sections.items():
        defaults[section] = asdict(section_schema())
    store = ConfigStore.instance()
    store.repo.pop("recipe", None)
    store.repo.pop("launcher", None)
    store.store(name=PRIMARY, node={"defaults": ["_self_", {"launcher": "local"}, {"recipe": "???"}], **defaults})
    for launcher, launcher_schema in launchers.items():
        store.store(group="launcher", name=launcher, node=asdict(launcher_schema(name=launcher)), package="launcher")
    for recipe in manager.recipes.values():
        store.store(group="recipe", name=recipe.name, node=_load_yaml(recipe.path), package="_global_")

    try:
        with initialize(version_base=None):
            composed = compose(config_name=PRIMARY, overrides=list(overrides))
        return OmegaConf.to_container(composed, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as error:
        key = _failing_key(error)
        if key is not None:
            schema = run_schema(family_config, plugin_sections, launchers.get("local", object))
            raise UsageError(_unknown_key_message(schema, key)) from None
        raise UsageError(f"Cannot compose the config: {error}") from None


OPEN_SECTIONS = ("kernels.",)
"""Sections whose keys are not fixed by a schema (kernel ops come from plugins): ``kernels.OP=NAME``
adds or replaces the key, as Hydra's ``++kernels.OP=NAME`` would; the op is checked when dispatch applies it."""


def _open_keys(overrides: Sequence[str]) -> list[str]:
    return [f"++{o}" if o.startswith(OPEN_SECTIONS) else o for o in overrides]


def _failing_key(error: BaseException) -> str | None:
    """The full key Hydra could not override because it does not exist, if that is the error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__ if error.__cause__ is not None else error
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        return str(cause.full_key)
    return None


def _unknown_key_message(schema: type, key: str) -> str:
    parts = key.split(".")
    current: Any = schema
    for depth, part in enumerate(parts[:-1]):
        hints = typing.get_type_hints(current) if dataclasses.is_dataclass(current) else {}
        if part not in hints:
            parent = ".".join(parts[:depth]) or "the config"
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            return f"Unknown key '{'.'.join(parts[: depth + 1])}'.{did_you_mean(part, hints, prefix)} Valid keys in {parent}: {', '.join(hints)}."
        current = hints[part]
    hints = typing.get_type_hints(current) if dataclasses.is_dataclass(current) else {}
    parent = ".".join(parts[:-1]) or "the config"
    valid = f" Valid keys in '{parent}': {', '.join(hints)}." if hints else ""
    prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
    return f"Unknown key '{key}'.{did_you_mean(parts[-1], hints, prefix)}{valid}"


def _load_yaml(path: Any) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception as error:
        raise UsageError(f"Recipe {path} is not valid YAML: {error}") from None
