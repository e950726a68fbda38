"""What a plugin author imports: the ``hookimpl`` marker and ``PluginInfo``.

A Jevons plugin is any object (usually a module) with functions marked
``@hookimpl`` whose names match :mod:`jevons.framework.hookspecs`. Built-in
plugins and families register exactly like third-party ones; a third-party
package exposes its plugin through an entry point in the group ``jevons``::

    [project.entry-points.jevons]
    my_plugin = "my_package.plugin"

A plugin may declare what it supports with a module-level ``PLUGIN_INFO``.
Keep the module's top level light: import torch and friends inside hook bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("jevons")

ENTRY_POINT_GROUP = "jevons"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin's declared compatibility, checked when the config is validated.

    :param families: names of the recipe families the plugin works with; empty
        means every family (a plugin that only adds a callback, say).
    :param capabilities: model capabilities the plugin needs from the family
        (``Family.capabilities``), e.g. ``"attention_processors"``; each must be
        present, whatever the family.
    :param conflicts: names of plugins this one cannot run with.
    :param description: one line for ``jevons plugins``.
    :param config: the dataclass of the plugin's config section, registered under the plugin's
        name while plugins load (the section a run's ``configure`` reads with
        :func:`~jevons.framework.config.schema.section`); None for a plugin without settings.
        The ``register_config`` hook does the same for a section of another name.
    """

    families: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    description: str = ""
    config: type[Any] | None = None


def plugin_info(plugin: object) -> PluginInfo:
    """The plugin's declared ``PLUGIN_INFO``, or the permissive default."""
    info = getattr(plugin, "PLUGIN_INFO", None)
    return info if isinstance(info, PluginInfo) else PluginInfo()
