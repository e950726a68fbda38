"""Loading plugins and calling their hooks.

Step 1 of a run's lifecycle (docs/architecture.md): built-ins first, then third-party
entry points in the group ``jevons`` (skipped, not even imported, when
``JEVONS_DISABLE_PLUGIN_AUTOLOAD=1``); then every plugin's ``register_*`` hooks
fill the registries of families, recipes, config sections and kernels.

Hook calls go through this class so that (a) a failing hook becomes a
:class:`PluginError` naming plugin and hook, (b) conflicts name both plugins,
(c) only enabled plugins act on a run, and (d) ``JEVONS_TRACE_HOOKS=1`` prints
every call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pluggy
import yaml

from jevons.framework import builtins, hookspecs
from jevons.framework.errors import PluginError, UsageError, did_you_mean, format_choices
from jevons.framework.family import Family, RecipeDirectory
from jevons.framework.plugin import ENTRY_POINT_GROUP, PluginInfo, plugin_info

T = TypeVar("T")

REGISTER_HOOKS = ("register_recipes", "register_config", "register_kernels")
"""Hooks called on every loaded plugin; all others act only for enabled plugins."""

MAKE_HOOKS = ("make_objective", "make_optimizer", "make_batch_sampler", "make_generator")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered thing and the plugin that registered it."""

    value: T
    plugin: str


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    family: str
    plugin: str


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class PluginManager:
    """Jevons' pluggy plugin manager plus the registries filled at load time."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager("jevons")
        self._pm.add_hookspecs(hookspecs)
        self.versions: dict[str, str] = {}
        self.families: dict[str, Registered[Family]] = {}
        self.recipes: dict[str, Recipe] = {}
        self.config_sections: dict[str, Registered[type]] = {}
        self.trace = _env_flag("JEVONS_TRACE_HOOKS")
        self._collected = False

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(cls, extra: Sequence[tuple[str, object]] = (), autoload: bool | None = None) -> PluginManager:
        """Built-ins, then entry points (unless disabled), then ``extra`` plugins; then collect."""
        manager = cls()
        from jevons.framework import __version__

        for name, module_path in builtins.BUILTIN_PLUGINS:
            manager.register(importlib.import_module(module_path), name, version=__version__)
        if autoload is None:
            autoload = not _env_flag("JEVONS_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            manager._load_entry_points()
        for name, plugin in extra:
            manager.register(plugin, name)
        manager.collect()
        return manager

    def register(self, plugin: object, name: str, version: str | None = None) -> None:
        existing = self._pm.get_plugin(name)
        if existing is not None:
            raise UsageError(
                f"Two plugins are named '{name}': {_describe_plugin(existing)} and {_describe_plugin(plugin)}. "
                f"Uninstall one of them or rename its entry point."
            )
        self._pm.register(plugin, name=name)
        self.versions[name] = version or getattr(plugin, "__version__", "") or "unknown"

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken third-party package must not look like ours
                raise PluginError(entry_point.name, "import", error) from error
            version = entry_point.dist.version if entry_point.dist is not None else None
            self.register(plugin, entry_point.name, version=version)

    def collect(self) -> None:
        """Call every plugin's ``register_*`` hooks and fill the registries."""
        from jevons.kernels import dispatch

        for impl in self._impls("register_recipes"):
            self._call_impl(
                impl, "register_recipes", register=lambda item, _p=impl.plugin_name: self._add_recipes(item, _p)
            )
        for impl in self._impls("register_config"):
            self._call_impl(
                impl,
                "register_config",
                register=lambda name, schema, _p=impl.plugin_name: self._add_section(name, schema, _p),
            )
        for impl in self._impls("register_kernels"):
            self._call_impl(impl, "register_kernels", register=dispatch.registrar(impl.plugin_name))
        self._collected = True

    def _add_recipes(self, item: Any, plugin: str) -> None:
        if isinstance(item, RecipeDirectory):
            directory, family = Path(item.path), None
        elif isinstance(item, Family):
            if item.name in self.families:
                raise UsageError(
                    f"Family '{item.name}' is registered by both plugin '{self.families[item.name].plugin}' "
                    f"and plugin '{plugin}'."
                )
            self.families[item.name] = Registered(item, plugin)
            directory, family = item.recipe_dir, item.name
        else:
            raise PluginError(
                plugin, "register_recipes", TypeError(f"expected a Family or RecipeDirectory, got {item!r}")
            )
        if directory is None:
            return
        for path in sorted(Path(directory).glob("*.yaml")):
            name = path.stem
            if name in self.recipes:
                other = self.recipes[name]
                raise UsageError(
                    f"Recipe '{name}' is registered by both plugin '{other.plugin}' ({other.path}) "
                    f"and plugin '{plugin}' ({path}). Rename one of the files."
                )
            self.recipes[name] = Recipe(name, path, family or _read_family(path), plugin)

    def _add_section(self, name: str, schema: type, plugin: str) -> None:
        if name in self.config_sections:
            raise UsageError(
                f"Config section '{name}' is registered by both plugin '{self.config_sections[name].plugin}' "
                f"and plugin '{plugin}'."
            )
        self.config_sections[name] = Registered(schema, plugin)

    # -- what is loaded ------------------------------------------------------

    def names(self) -> list[str]:
        return [name for name, _ in self._pm.list_name_plugin()]

    def get(self, name: str) -> object:
        return self._pm.get_plugin(name)

    def info(self, name: str) -> PluginInfo:
        return plugin_info(self._pm.get_plugin(name))

    def hooks_of(self, name: str) -> list[str]:
        """The hooks plugin ``name`` implements, in hookspec order."""
        caller_names = [c.name for c in self._pm.get_hookcallers(self._pm.get_plugin(name)) or []]
        return [h for h in hookspec_names() if h in caller_names]

    def run_plugins(self) -> list[str]:
        """Plugins that can be enabled in ``plugins:``: those implementing a hook that acts on a run."""
        return [name for name in self.names() if any(h not in REGISTER_HOOKS for h in self.hooks_of(name))]

    def family(self, name: str) -> Family:
        if name not in self.families:
            raise UsageError(
                f"Unknown family '{name}'.{did_you_mean(name, self.families)} "
                f"Installed families: {format_choices(self.families)}."
            )
        return self.families[name].value

    # -- checks made when the config is validated ----------------------------

    def check_enabled(self, enabled: Sequence[str], family: Family) -> None:
        """Unknown names, unsupported family pairs, declared conflicts, two answers to one make_* hook."""
        available = self.run_plugins()
        seen: set[str] = set()
        for name in enabled:
            if name not in available:
                raise UsageError(
                    f"Unknown plugin '{name}' in plugins.{did_you_mean(name, available)} "
                    f"Installed plugins: {format_choices(available)}."
                )
            if name in seen:
                raise UsageError(f"Plugin '{name}' is listed twice in plugins.")
            seen.add(name)
        for name in enabled:
            reason = unsupported_reason(self.info(name), family)
            if reason:
                raise UsageError(f"Plugin '{name}' does not support recipe family '{family.name}': {reason}.")
            for other in self.info(name).conflicts:
                if other in seen:
                    raise UsageError(
                        f"Plugins '{name}' and '{other}' cannot run together: '{name}' declares a conflict."
                    )
        for hook in MAKE_HOOKS:
            answering = [impl.plugin_name for impl in self._impls(hook, enabled) if not _is_wrapper(impl)]
            if len(answering) > 1:
                raise UsageError(
                    f"Plugins '{answering[0]}' and '{answering[1]}' both answer '{hook}'; only one may. "
                    f"Enable one of them, or make one a wrapper (@hookimpl(wrapper=True))."
                )

    # -- calling hooks -------------------------------------------------------

    def call_each(self, hook: str, enabled: Sequence[str], **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on each enabled plugin, in plugin order; ``(plugin, answer)`` pairs."""
        return [(impl.plugin_name, self._call_impl(impl, hook, **kwargs)) for impl in self._impls(hook, enabled)]

    def call_first(self, hook: str, enabled: Sequence[str], **kwargs: Any) -> Any:
        """Call a ``make_*`` hook on the enabled plugins, wrappers included; first answer or None."""
        impls = self._impls(hook, enabled)
        if not impls:
            return None
        others = [p for name, p in self._pm.list_name_plugin() if name not in {i.plugin_name for i in impls}]
        caller = self._pm.subset_hook_caller(hook, remove_plugins=others)
        self._trace(hook, ", ".join(i.plugin_name for i in impls))
        try:
            return caller(**kwargs)
        except UsageError:
            raise
        except Exception as error:
            raise PluginError(_blame(error, impls), hook, error) from error

    def _impls(self, hook: str, enabled: Iterable[str] | None = None) -> list[pluggy.HookImpl]:
        impls = getattr(self._pm.hook, hook).get_hookimpls()
        if enabled is not None:
            wanted = set(enabled)
            impls = [i for i in impls if i.plugin_name in wanted]
        return list(impls)  # registration order: built-ins, entry points, then extras

    def _call_impl(self, impl: pluggy.HookImpl, hook: str, **kwargs: Any) -> Any:
        self._trace(hook, impl.plugin_name)
        try:
            return impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except UsageError:
            raise
        except Exception as error:
            raise PluginError(impl.plugin_name, hook, error) from error

    def _trace(self, hook: str, plugins: str) -> None:
        if self.trace:
            print(f"jevons: hook {hook} -> {plugins}", file=sys.stderr, flush=True)


def hookspec_names() -> list[str]:
    """All hook names, in the order they are declared in hookspecs.py."""
    return [name for name, value in vars(hookspecs).items() if hasattr(value, "jevons_spec")]


def unsupported_reason(info: PluginInfo, family: Family) -> str:
    """Why a plugin cannot run with a family, or an empty string if it can."""
    if info.families and family.name not in info.families:
        return f"it supports only {', '.join(info.families)}"
    missing = [c for c in info.capabilities if c not in family.capabilities]
    if missing:
        return f"the family's model lacks {', '.join(missing)}"
    return ""


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


def _blame(error: BaseException, impls: Sequence[pluggy.HookImpl]) -> str:
    """The plugin whose hook function is innermost in the traceback."""
    codes = {impl.function.__code__: impl.plugin_name for impl in impls}
    blamed = impls[0].plugin_name
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code in codes:
            blamed = codes[frame.f_code]
    return blamed


def _describe_plugin(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _read_family(path: Path) -> str:
    """A recipe's ``family:`` key, read without composing it."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"Recipe {path} cannot be read: {error}") from error
    family = data.get("family") if isinstance(data, dict) else None
    if not isinstance(family, str):
        raise UsageError(f"Recipe {path} does not say which family it belongs to: add 'family: <name>'.")
    return family
