"""Loading plugins and calling their hooks, all through pluggy.

Step 1 of a run's lifecycle (docs/architecture.md, "Lifecycle of a run"):
built-ins first, then third-party entry points in the group ``jevons``
(skipped, not even imported, when ``JEVONS_DISABLE_PLUGIN_AUTOLOAD=1``); a
hook implementation whose name is no Jevons hook is refused as the plugin
registers. Then the load-time ``register_recipes``, ``register_config`` and
``register_kernels`` hooks of every loaded plugin fill the registries of
families, recipes, config sections and kernels.

Every hook is called through a pluggy hook caller, so pluggy wrappers
(``@hookimpl(wrapper=True)``) work on every hook; only enabled plugins act on
a run. Hooks whose answers must be attributed to one plugin (the load-time
``register_*`` hooks and ``replace_*``) are called once per answering plugin,
with every wrapper of the hook around each call (wrappers alone: one call);
the others are one call over
the enabled plugins, in pluggy's order (the plugin registered last runs
first). A failing hook becomes a :class:`PluginError` naming plugin and hook;
``JEVONS_TRACE_HOOKS=1`` prints every call through pluggy's hook-call
monitoring.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

import pluggy
import yaml

from jevons.framework import builtins, hookspecs
from jevons.framework.compat import pluggy_subset_caller
from jevons.framework.errors import PluginError, UsageError, did_you_mean, format_choices
from jevons.framework.family import Family, RecipeDirectory
from jevons.framework.plugin import ENTRY_POINT_GROUP, PluginInfo, plugin_info

T = TypeVar("T")

LOAD_HOOKS = ("register_recipes", "register_config", "register_kernels")
"""Called once per process on every loaded plugin, while plugins load; all other hooks act per run,
on enabled plugins only (``register_callbacks`` included)."""

MAKE_HOOKS = ("make_objective", "make_optimizer", "make_batch_sampler", "make_generator")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered thing and the plugin that registered it."""

    value: T
    plugin: str
    source: str = ""
    """How it was registered (a hook's name, or ``PluginInfo.config``), for error messages."""


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
        if _env_flag("JEVONS_TRACE_HOOKS"):
            self._pm.add_hookcall_monitoring(_trace_before, _trace_after)

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
        """Add one plugin; refuse a name taken twice, a misspelt hook or a hook with wrong arguments."""
        existing = self._pm.get_plugin(name)
        if existing is not None:
            raise UsageError(
                f"Two plugins are named '{name}': {_describe_plugin(existing)} and {_describe_plugin(plugin)}. "
                f"Uninstall one of them or rename its entry point."
            )
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            detail = "; ".join(line.strip() for line in str(error).splitlines()[1:])
            raise UsageError(
                f"Plugin '{name}' cannot be loaded: {detail}. Each hook's arguments are in docs/hooks.md."
            ) from None
        unknown = [c.name for c in self._pm.get_hookcallers(plugin) or [] if not c.has_spec()]
        if unknown:
            self._pm.unregister(plugin)
            hooks = hookspec_names()
            raise UsageError(
                f"Plugin '{name}' implements '{unknown[0]}', which is not a Jevons hook.{did_you_mean(unknown[0], hooks)} "
                f"Hooks: {', '.join(hooks)} (docs/hooks.md)."
            )
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
        """Call every plugin's load-time ``register_*`` hooks, in registration order, and fill the registries
        (a ``PluginInfo.config`` section first, under its plugin's name)."""
        from jevons.kernels import dispatch

        for plugin, impls in self._groups("register_recipes"):
            self._call("register_recipes", impls, register=lambda item, _p=plugin: self._add_recipes(item, _p))
        for plugin in self.names():
            schema = self.info(plugin).config
            if schema is not None:
                self._add_section(plugin, schema, plugin, source="PluginInfo.config")
        for plugin, impls in self._groups("register_config"):
            self._call(
                "register_config", impls, register=lambda name, schema, _p=plugin: self._add_section(name, schema, _p)
            )
        for plugin, impls in self._groups("register_kernels"):
            self._call("register_kernels", impls, register=dispatch.registrar(plugin))

    def _add_recipes(self, item: Any, plugin: str) -> None:
        directory: Path | None
        family: str | None
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

    def _add_section(self, name: str, schema: type, plugin: str, source: str = "register_config") -> None:
        if name in self.config_sections:
            raise UsageError(
                f"Config section '{name}' is registered by both plugin '{self.config_sections[name].plugin}' "
                f"and plugin '{plugin}'."
            )
        self.config_sections[name] = Registered(schema, plugin, source)

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
        return [name for name in self.names() if any(h not in LOAD_HOOKS for h in self.hooks_of(name))]

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

    def call_all(self, hook: str, enabled: Sequence[str], **kwargs: Any) -> list[Any]:
        """One pluggy call of ``hook`` over the enabled plugins, wrappers included; the non-None answers."""
        impls = self._impls(hook, enabled)
        return list(self._call(hook, impls, **kwargs)) if impls else []

    def call_first(self, hook: str, enabled: Sequence[str], **kwargs: Any) -> Any:
        """Call a ``make_*`` (firstresult) hook on the enabled plugins, wrappers included; the answer or None."""
        impls = self._impls(hook, enabled)
        return self._call(hook, impls, **kwargs) if impls else None

    def call_each(self, hook: str, enabled: Sequence[str], **kwargs: Any) -> list[tuple[str, Any]]:
        """Ask each enabled plugin that answers ``hook`` in turn (registration order), every enabled wrapper
        of the hook around each call: ``(plugin, answer)`` pairs, so each answer is attributed."""
        pairs = []
        for plugin, impls in self._groups(hook, enabled):
            answers = self._call(hook, impls, **kwargs)
            pairs.append((plugin, answers[0] if answers else None))
        return pairs

    def call_registering(
        self, hook: str, enabled: Sequence[str], add: Callable[[str, Any], None], **kwargs: Any
    ) -> None:
        """One pluggy call of a per-run ``register_*`` hook; ``add(plugin, item)`` for each ``register(item)``,
        attributed to the plugin whose hook function (or a function it called) made the call."""
        impls = self._impls(hook, enabled)

        def register(item: Any) -> None:
            frame: FrameType | None = sys._getframe(1)
            while frame is not None:
                owner = _owner(frame, impls)
                if owner is not None:
                    add(owner, item)
                    return
                frame = frame.f_back
            raise UsageError(
                f"{hook}'s register() was called after the hook returned; call it inside the hook implementation."
            )

        self.call_all(hook, enabled, register=register, **kwargs)

    def _groups(self, hook: str, enabled: Iterable[str] | None = None) -> list[tuple[str, list[pluggy.HookImpl]]]:
        """One call per answering plugin (registration order), each with every wrapper of the hook; when only
        wrappers implement it, one call of them all, attributed to them."""
        impls = self._impls(hook, enabled)
        wrappers = [impl for impl in impls if _is_wrapper(impl)]
        answering = [impl for impl in impls if not _is_wrapper(impl)]
        if not answering:
            return [(", ".join(w.plugin_name for w in wrappers), wrappers)] if wrappers else []
        return [(impl.plugin_name, [impl, *wrappers]) for impl in answering]

    def _call(self, hook: str, impls: Sequence[pluggy.HookImpl], **kwargs: Any) -> Any:
        """One pluggy call of ``hook`` reaching exactly the plugins of ``impls``; a failure names its plugin."""
        caller = pluggy_subset_caller(self._pm, hook, {impl.plugin_name for impl in impls})
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
        order = {name: position for position, name in enumerate(self.names())}
        return sorted(impls, key=lambda impl: order[impl.plugin_name])  # registration order


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


def _trace_before(hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    print(f"jevons: hook {hook} -> {', '.join(impl.plugin_name for impl in impls)}", file=sys.stderr, flush=True)


def _trace_after(outcome: Any, hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    if outcome.exception is not None:
        print(f"jevons: hook {hook} raised {type(outcome.exception).__name__}", file=sys.stderr, flush=True)


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


def _blame(error: BaseException, impls: Sequence[pluggy.HookImpl]) -> str:
    """The plugin whose hook function is innermost in the traceback."""
    blamed = impls[0].plugin_name
    for frame, _ in traceback.walk_tb(error.__traceback__):
        blamed = _owner(frame, impls) or blamed
    return blamed


def _owner(frame: FrameType, impls: Sequence[pluggy.HookImpl]) -> str | None:
    """The plugin whose hook implementation ``frame`` runs, or None. Two plugins may share a function's
    code (two instances of one class): a method's frame is matched by its ``self`` too."""
    for impl in impls:
        function = impl.function
        if frame.f_code is getattr(function, "__code__", None):
            bound_to = getattr(function, "__self__", None)
            if bound_to is None or frame.f_locals.get("self") is bound_to:
                return impl.plugin_name
    return None


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
