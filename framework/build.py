"""Step 4 of a run: build everything, in the one documented order (``docs/build_order.md``).

    model      = family.build_model(config)
    for each attention module the family lists:  replace_attention(module, name, config)
    for each feed-forward module it lists:       replace_ffn(module, name, layer_index, config)
    modify_model(model, config)
    trainer.activation_checkpointing: those blocks (all, or every N-th) recomputed in backward
    trainer.compile: each block holding those modules, compiled in place
    parallel.shard: each of those blocks, then the model, sharded with FSDP2 over the data-parallel ranks;
                    a pretrained model's weights, deferred until now, read into each rank's shards
    objective  = make_objective(model, config)       or family.default_objective
    optimizer  = make_optimizer(model, config)       or AdamW + schedule
    datasets   = objective.dataset(split) or family.build_dataset(config, split), for "train" and "val"
    samplers   = make_batch_sampler(dataset, config, stage) per split, or the random sampler
    generator  = make_generator(model, config)       or family.default_generator
    callbacks  = register_callbacks(register, config)

Only enabled plugins (``config.plugins``) are asked. ``tests/framework/test_build_order.py``
pins this order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from jevons.framework.activation_checkpointing import CheckpointedBlock, checkpoint_blocks, compile_checkpointed
from jevons.framework.config.schema import Config
from jevons.framework.data.sampler import RandomBatchSampler
from jevons.framework.distributed import data_parallel_rank_and_size
from jevons.framework.errors import PluginError, UsageError
from jevons.framework.family import Family
from jevons.framework.objective import Objective
from jevons.framework.optim import Optimization, as_optimization, default_optimizer
from jevons.framework.plugin_manager import PluginManager
from jevons.framework.sharding import ShardLayout, forget_layout
from jevons.framework.weights import deferred_loading, take_deferred

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from jevons.framework.protocols import BatchSampler, Generator, MapDataset


@dataclass
class Built:
    model: torch.nn.Module
    objective: Objective
    optimization: Optimization
    datasets: dict[str, MapDataset]
    batch_samplers: dict[str, BatchSampler]
    generator: Generator
    callbacks: list[pl.Callback] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)
    """Module name to the plugin that replaced it."""


def build(manager: PluginManager, family: Family, config: Config) -> Built:
    enabled = config.plugins
    model, objective, replaced = build_model_and_objective(manager, family, config)
    answer = manager.call_first("make_optimizer", enabled, model=model, config=config)
    optimization = as_optimization(answer if answer is not None else default_optimizer(model, config), config)

    datasets = {split: _dataset(objective, family, config, split) for split in ("train", "val")}
    samplers = {}
    for stage, dataset in datasets.items():
        sampler = manager.call_first("make_batch_sampler", enabled, dataset=dataset, config=config, stage=stage)
        samplers[stage] = sampler if sampler is not None else default_batch_sampler(dataset, config, stage)

    generator = manager.call_first("make_generator", enabled, model=model, config=config)
    if generator is None:
        generator = family.default_generator(model, config)

    callbacks = plugin_callbacks(manager, config)
    return Built(model, objective, optimization, datasets, samplers, generator, callbacks, replaced)


def _dataset(objective: Objective, family: Family, config: Config, split: str) -> Any:
    """The objective's own dataset (a data-free objective's noise seeds), else the family's."""
    own = objective.dataset(split) if isinstance(objective, Objective) else None
    return own if own is not None else family.build_dataset(config, split)


def build_model_and_objective(
    manager: PluginManager, family: Family, config: Config
) -> tuple[torch.nn.Module, Objective, dict[str, str]]:
    """The first steps of the build, shared with loading a run for inference."""
    enabled = config.plugins
    sharding = config.parallel.shard > 1 and _world_size() > 1  # not when one process loads a run
    with deferred_loading(sharding):  # a pretrained model stays on the meta device until it is sharded
        model = family.build_model(config)
    replaced: dict[str, str] = {}
    for name, module in family.attention_modules(model):
        _replace(manager, enabled, "replace_attention", model, name, module, replaced, config=config)
    for name, layer_index, module in family.ffn_modules(model):
        _replace(manager, enabled, "replace_ffn", model, name, module, replaced, layer_index=layer_index, config=config)
    manager.call_all("modify_model", enabled, model=model, config=config)
    # torchtitan's order: checkpointing, then compile (then sharding), each per block.
    every = checkpointing_interval(config.trainer.activation_checkpointing)
    if every is not None:
        blocks = checkpoint_blocks(model, family_blocks(family, model, "trainer.activation_checkpointing"), every)
        print(
            f"trainer.activation_checkpointing: {len(blocks)} blocks recomputed in backward ({_span(blocks)})",
            flush=True,
        )
    if config.trainer.compile:
        blocks = compile_blocks(family, model)
        print(f"trainer.compile: {len(blocks)} blocks compiled in place ({_span(blocks)})", flush=True)
    if sharding:
        deferred = take_deferred(model)  # before sharding: FSDP replaces the parameters it finds them by
        blocks, layout = shard_blocks(family, model, config)
        print(f"parallel.shard={config.parallel.shard}: {len(blocks)} blocks and the root sharded", flush=True)
        if deferred is not None:
            loaded = deferred.load(model, layout.data_mesh.device_type)
            print(f"parallel.shard={config.parallel.shard}: {loaded} pretrained tensors read into shards", flush=True)
    else:
        forget_layout()  # an earlier sharded run in this process
    objective = manager.call_first("make_objective", enabled, model=model, config=config)
    if objective is None:
        objective = family.default_objective(model, config)
    return model, objective, replaced


def family_blocks(family: Family, model: torch.nn.Module, setting: str) -> list[str]:
    """The model's blocks: the modules holding the family's attention and FFN modules, in model order.
    ``setting`` names the config key that needs them, for the error when the family lists none."""
    listed = [name for name, _ in family.attention_modules(model)]
    listed += [name for name, _, _ in family.ffn_modules(model)]
    blocks = list(dict.fromkeys(name.rpartition(".")[0] for name in listed))  # in model order, once each
    if not blocks or "" in blocks:
        raise UsageError(f"{setting}: family '{family.name}' lists no attention or FFN modules inside blocks.")
    return blocks


def checkpointing_interval(setting: str | int) -> int | None:
    """Every how many blocks ``trainer.activation_checkpointing`` checkpoints one (None: off)."""
    if setting == "none":
        return None
    return 1 if setting == "full" else int(setting)


def compile_blocks(family: Family, model: torch.nn.Module) -> list[str]:
    """``torch.compile`` in place every block that holds one of the family's attention or FFN modules.

    Per block, not the whole model (torchtitan's and diffusers' regional compilation): the blocks are
    one class, so they share one compiled graph and compiling costs one block's time, and
    ``Module.compile`` keeps parameter names (checkpoints and exports are unchanged). Returns the
    compiled block names.
    """
    blocks = family_blocks(family, model, "trainer.compile=true")
    for name in blocks:
        block = model.get_submodule(name)
        if isinstance(block, CheckpointedBlock):
            compile_checkpointed(block)  # the checkpoint outside, its block's forward compiled
        else:
            block.compile()
    return blocks


def shard_blocks(family: Family, model: torch.nn.Module, config: Config) -> tuple[list[str], ShardLayout]:
    """FSDP2 over the data-parallel ranks, per block and then the root (:mod:`jevons.framework.sharding`)."""
    from jevons.framework.config.compose import data_parallel_layout
    from jevons.framework.sharding import shard_model

    blocks = family_blocks(family, model, f"parallel.shard={config.parallel.shard}")
    replicate, shard = data_parallel_layout(config.parallel, torch.distributed.get_world_size())
    return blocks, shard_model(model, blocks, replicate, shard, config.trainer.precision)


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _span(blocks: list[str]) -> str:
    return blocks[0] if len(blocks) == 1 else f"{blocks[0]} ... {blocks[-1]}"


def default_batch_sampler(dataset: Any, config: Config, stage: str) -> RandomBatchSampler:
    """Shuffled batches for training; the first batches, in order, for validation."""
    rank, world = data_parallel_rank_and_size()
    train = stage == "train"
    batch_size = config.data.batch_size if train else (config.data.val_batch_size or config.data.batch_size)
    try:
        return RandomBatchSampler(
            len(dataset), batch_size, seed=config.seed, shuffle=train, drop_last=train, rank=rank, world_size=world
        )
    except ValueError as error:
        raise UsageError(f"data.batch_size={batch_size} with the {stage} split: {error}.") from None


def _replace(
    manager: PluginManager,
    enabled: Sequence[str],
    hook: str,
    model: torch.nn.Module,
    name: str,
    module: torch.nn.Module,
    replaced: dict[str, str],
    **kwargs: Any,
) -> None:
    answers = [
        (plugin, answer)
        for plugin, answer in manager.call_each(hook, enabled, module=module, name=name, **kwargs)
        if answer is not None
    ]
    if not answers:
        return
    if len(answers) > 1:
        raise UsageError(
            f"Plugins '{answers[0][0]}' and '{answers[1][0]}' both replace module '{name}' in {hook}; only one may. "
            f"Disable one of them."
        )
    plugin, replacement = answers[0]
    if isinstance(replacement, torch.nn.Module):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)
    elif callable(getattr(module, "set_processor", None)):  # a diffusers attention: parameter names are kept
        module.set_processor(replacement)  # type: ignore[operator]  # diffusers' Attention method
    else:
        raise PluginError(
            plugin, hook, TypeError(f"returned {type(replacement).__name__} for '{name}', expected an nn.Module")
        )
    replaced[name] = plugin


def plugin_callbacks(manager: PluginManager, config: Config) -> list[pl.Callback]:
    """The enabled plugins' ``register_callbacks``, in plugin registration order; each reporting callback
    learns the name of the plugin that registered it (``PluginReport.plugin``)."""
    import pytorch_lightning as pl

    registered: list[tuple[str, Any]] = []
    manager.call_registering(
        "register_callbacks", config.plugins, lambda plugin, item: registered.append((plugin, item)), config=config
    )
    order = {name: position for position, name in enumerate(manager.names())}
    registered.sort(key=lambda pair: order[pair[0]])  # sort is stable: a plugin's own order is kept
    for plugin, callback in registered:
        if not isinstance(callback, pl.Callback):
            hint = (
                " (a lightning.pytorch.Callback? Jevons uses pytorch_lightning)"
                if "lightning" in type(callback).__module__
                else ""
            )
            raise UsageError(
                f"register_callbacks got {type(callback).__name__}{hint}, expected a pytorch_lightning.Callback "
                f"from plugin '{plugin}'."
            )
        if callable(getattr(callback, "report", None)) and not getattr(callback, "plugin", None):
            callback.plugin = plugin  # type: ignore[attr-defined]  # a PluginReport is named by its registration
    return [callback for _, callback in registered]
