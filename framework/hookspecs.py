"""Every hook a Jevons plugin can implement, in one place.

The rules (docs/architecture.md, "Hooks"; one test each in
``tests/framework/test_hooks.py``):

* A function marked ``@hookimpl`` whose name is none of these hooks, or whose
  arguments are not the hook's, is refused when its plugin loads.
* ``register_recipes``, ``register_config`` and ``register_kernels`` are called
  once per process on every loaded plugin, enabled or not, while plugins load.
  Each plugin calls the ``register`` callback it is given; registering a name
  twice is a :class:`~jevons.framework.errors.UsageError` that names both
  plugins.
* Every other hook acts per run and only for *enabled* plugins (those listed in
  the run's ``plugins:``), ``register_callbacks`` included.
* Every hook is called through pluggy, so wrappers (``@hookimpl(wrapper=True)``)
  work on each. ``replace_*`` and the load-time ``register_*`` hooks are asked
  once per answering plugin (wrappers around each call), so every answer is
  attributed; the others are one call over the enabled plugins.
* ``make_*`` hooks are answered by at most one enabled plugin. Two enabled
  plugins implementing the same ``make_*`` hook are refused when the config is
  checked, unless one of them is a wrapper, which wraps the other's answer. The
  framework or the recipe's family answers when no plugin does.
* ``replace_*`` hooks are asked once per module; two plugins answering for the
  same module is an error naming both.
* ``modify_*`` hooks change their argument in place.

No hook runs per training step: per-step behaviour lives in the objects the
hooks return, and training events are observed through Lightning callbacks
(``register_callbacks``).

The build order in which these hooks are called is a contract, documented in
``docs/build_order.md`` and implemented in :mod:`jevons.framework.build`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from jevons.framework.config.schema import Config
    from jevons.framework.family import Family, RecipeDirectory
    from jevons.framework.objective import Objective
    from jevons.framework.optim import Optimization
    from jevons.framework.protocols import AttentionProcessor, BatchSampler, Generator, KernelRegistrar, MapDataset

hookspec = pluggy.HookspecMarker("jevons")


# ---------------------------------------------------------------------------
# Registration: called on every loaded plugin, before the config is composed
# ---------------------------------------------------------------------------


@hookspec
def register_recipes(register: Callable[[Family[Any] | RecipeDirectory], None]) -> None:
    """Add recipe families and recipe directories.

    Called once per process while plugins load, on every loaded plugin (enabled
    or not), before any config is composed; torch must not be imported here.

    :param register: call ``register(family)`` with an object implementing
        :class:`jevons.framework.family.Family` to add a family (its
        ``recipe_dir`` is scanned for ``*.yaml`` recipes), or
        ``register(RecipeDirectory(path))`` to add recipes for families that
        exist already. Two recipes or families of the same name are an error
        naming both plugins.
    :return: nothing; results go through ``register``.
    """


@hookspec
def register_config(register: Callable[[str, type[Any]], None]) -> None:
    """Add the typed schema of this plugin's config section.

    Called on every loaded plugin while plugins load. The section is named
    after the plugin and validated only when the plugin is enabled.

    :param register: call ``register(section_name, dataclass_type)``. The
        dataclass' defaults are the section's defaults; a field's type is
        checked against the composed value (int, float, bool, str, Literal,
        Optional, list, dict and nested dataclasses).
    :return: nothing; results go through ``register``.
    """


@hookspec
def register_kernels(register: KernelRegistrar) -> None:
    """Add an implementation of a compute kernel op.

    Called on every loaded plugin while plugins load; the implementation is
    imported lazily, only when dispatch picks it.

    :param register: call ``register(op, name, loader, priority=0,
        available=lambda: True)``; ``loader()`` returns the callable. Dispatch
        picks the available implementation with the highest priority unless the
        config's ``kernels.<op>`` names one.
    :return: nothing; results go through ``register``.
    """


# ---------------------------------------------------------------------------
# Configuration: called on enabled plugins, after composition and validation
# ---------------------------------------------------------------------------


@hookspec
def configure(config: Config) -> None:
    """Check or fill in this plugin's section against the whole config.

    Called once per run on each enabled plugin, after the config has been
    composed and type-checked, before anything is launched or written.

    :param config: the typed run config; this plugin's section is
        ``getattr(config, plugin_name)``. It may be changed in place (e.g. a
        derived default); an impossible combination raises
        :class:`~jevons.framework.errors.UsageError`.
    :return: nothing.
    """


# ---------------------------------------------------------------------------
# Building the model: called on enabled plugins, in the documented order
# ---------------------------------------------------------------------------


@hookspec
def replace_attention(
    module: torch.nn.Module, name: str, config: Config
) -> torch.nn.Module | AttentionProcessor | None:
    """Return a replacement for one attention module, or None.

    Called after the family built the model, once per attention module the
    family lists (``Family.attention_modules``), on each enabled plugin.

    :param module: the attention module as built by the family.
    :param name: its fully-qualified name in the model (``blocks.3.attn``).
    :param config: the run config.
    :return: ``None`` to leave it; an ``nn.Module`` to swap in at ``name``; or,
        for a diffusers attention module, an attention *processor*, which is
        installed with ``module.set_processor`` so ``save_pretrained`` keys are
        kept. Two plugins answering for one module is an error naming both.
    """


@hookspec
def replace_ffn(module: torch.nn.Module, name: str, layer_index: int, config: Config) -> torch.nn.Module | None:
    """Return a replacement feed-forward module, or None.

    Called after ``replace_attention``, once per feed-forward module the family
    lists (``Family.ffn_modules``), on each enabled plugin.

    :param module: the feed-forward module as built by the family.
    :param name: its fully-qualified name in the model.
    :param layer_index: index of the transformer layer it belongs to.
    :param config: the run config.
    :return: ``None`` to leave it, or an ``nn.Module`` taking the same inputs.
        Two plugins answering for one module is an error naming both.
    """


@hookspec
def modify_model(model: torch.nn.Module, config: Config) -> None:
    """Change the model in place after module replacement.

    Called once per run on each enabled plugin, after all ``replace_*`` hooks. Under
    ``parallel.shard`` a pretrained model's weights are loaded only after sharding, so here (and in
    ``replace_*``) they are on the meta device, without values: shapes and names are there, values
    are not; parameters a plugin adds must be made with values (``framework/weights.py``).

    :param model: the model, replacements installed.
    :param config: the run config.
    :return: nothing; the change is made in place.
    """


@hookspec(firstresult=True)
def make_objective(model: torch.nn.Module, config: Config) -> Objective | None:
    """Return the training objective, or None.

    Called once per run after ``modify_model``. At most one enabled plugin may
    implement it (or one plus wrappers); when it returns ``None`` the family's
    default objective is used. First non-None answer wins.

    :param model: the model to train.
    :param config: the run config.
    :return: a :class:`jevons.framework.objective.Objective` (an ``nn.Module``
        computing the loss from ``(model, batch)``), or ``None``. The objective
        may own auxiliary networks and their optimizers.
    """


@hookspec(firstresult=True)
def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer | Optimization | None:
    """Return the optimizer(s) and schedule for the model's parameters, or None.

    Called once per run after ``make_objective``. At most one enabled plugin may
    implement it; when it returns ``None`` the framework's AdamW with the
    configured schedule is used. First non-None answer wins.

    :param model: the model whose parameters are optimized.
    :param config: the run config (``config.optimizer`` holds lr, weight decay
        and the schedule).
    :return: a ``torch.optim.Optimizer`` (the configured schedule is attached),
        a :class:`jevons.framework.optim.Optimization` carrying its own
        scheduler, or ``None``.
    """


@hookspec(firstresult=True)
def make_batch_sampler(dataset: MapDataset, config: Config, stage: str) -> BatchSampler | None:
    """Return a batch sampler, or None.

    Called once per dataset split after the family built the datasets. At most
    one enabled plugin may implement it; when it returns ``None`` the
    framework's random batch sampler is used. First non-None answer wins.

    :param dataset: the family's map-style dataset; ``dataset.lengths`` holds
        every sample's length(s).
    :param config: the run config.
    :param stage: ``"train"`` or ``"val"``.
    :return: a sampler yielding lists of indices that owns the data-parallel
        split and exposes ``state_dict``/``load_state_dict``/``set_epoch``, or
        ``None``.
    """


@hookspec(firstresult=True)
def make_generator(model: torch.nn.Module, config: Config) -> Generator | None:
    """Return the inference sampler (steps, cascade), or None.

    Called once per run after the batch samplers. At most one enabled plugin may
    implement it; when it returns ``None`` the family's default generator is
    used. First non-None answer wins.

    :param model: the trained model.
    :param config: the run config.
    :return: a callable generator object the family's ``evaluate`` and
        ``jevons sample`` use, or ``None``.
    """


@hookspec
def register_callbacks(register: Callable[[pl.Callback], None], config: Config) -> None:
    """Add Lightning callbacks to the run.

    Called once per run on each enabled plugin, last in the build, before
    ``Trainer.fit``.

    :param register: call ``register(callback)`` with a
        ``pytorch_lightning.Callback`` instance.
    :param config: the run config.
    :return: nothing; results go through ``register``.
    """
