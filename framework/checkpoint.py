"""The one checkpoint format (docs/architecture.md, "Checkpoints").

A checkpoint is a directory per step::

    checkpoints/
      step_00000200/
        dcp/                      model and optimizer tensors (torch.distributed.checkpoint)
        state-rank00000.pt        everything else, per rank: loop counters, LR schedule,
                                  sampler position, RNG streams, plugin state, optimizer
                                  hyper-parameters; loadable with weights_only=True
        config.yaml               the resolved run config
        COMPLETE                  written last, before the directory gets its final name
      latest                      the name of the newest complete checkpoint

It is written under a temporary name, fsynced, completed with the marker,
then renamed; ``latest`` moves only after that. Loading never unpickles
arbitrary objects: the DCP metadata goes through an allow-list unpickler and
the rest through ``torch.load(weights_only=True)``.

Optimizer state is stored by parameter name (``get_optimizer_state_dict``), so
a checkpoint can be loaded into a model built at another tensor-parallel
layout once its sharded tensors are DTensors.

Frozen parameters (``requires_grad=False``: a LoRA run's base, text encoders,
a VAE) are not saved: training never changes them and the build recreates
them from their pretrained folders or the seed. What is saved instead is the
SHA-256 of the frozen tensors this rank holds, and loading refuses a model
whose frozen tensors hash differently (the base changed under the run), so a
LoRA checkpoint holds the adapters and their optimizer state only.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import Shard

from jevons.framework.checkpoint_dirs import (
    LATEST,
    MARKER,
    checkpoint_name,
    complete_checkpoints,
    is_complete,
)
from jevons.framework.errors import UsageError

# -- saving ------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    module: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
) -> Path:
    """Write a checkpoint for ``step`` on every rank; only a complete one becomes visible."""
    rank, world = _rank_world()
    final = root / checkpoint_name(step)
    temporary = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
    _barrier(world)

    views, _ = _full_state(module, optimizers)
    tensors, extra = _split(views)
    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(temporary / "dcp", sync_files=True))
    state = {**state, "optimizer_extra": extra["optim"], "world_size": world, "frozen_sha256": frozen_digest(module)}
    _write_durably(temporary / f"state-rank{rank:05d}.pt", _serialize_safely(state))
    _barrier(world)

    if rank == 0:
        _write_durably(temporary / "config.yaml", config_yaml.encode())
        _write_durably(temporary / MARKER, f"{step}\n".encode())
        _fsync_dir(temporary)
        if final.exists():  # the same step saved again after a resume: replace it whole
            shutil.rmtree(final)
        os.rename(temporary, final)
        _fsync_dir(root)
        _write_durably(root / f"{LATEST}.tmp", f"{final.name}\n".encode())
        os.replace(root / f"{LATEST}.tmp", root / LATEST)
        _fsync_dir(root)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return final


def _full_state(module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> tuple[Any, Any]:
    """Model and optimizer state by parameter name, as DCP stores it, and as this rank holds it.

    Returns ``(views, held)``. ``held`` is what the state dict utilities give: plain tensors,
    tensor-parallel shards, FSDP's DTensors. ``views`` has the same tensors, sharing their storage,
    each named as the whole tensor it is part of: DCP takes same-named plain tensors on different
    ranks for replicas and keeps one of them, which silently loses the other shards (measured,
    docs/architecture.md), while whole-tensor DTensors are saved at their offsets and reload into
    any layout. Data-parallel replicas are deduplicated.
    """
    options = StateDictOptions(flatten_optimizer_state_dict=False, ignore_frozen_params=True)
    optim = get_optimizer_state_dict(module, list(optimizers), options=options) if optimizers else {}
    held = {"model": get_model_state_dict(module, options=options), "optim": optim}
    return _as_whole_tensors(held, _tensor_parallel_sharding(module)), held


def _tensor_parallel_sharding(module: torch.nn.Module) -> dict[str, tuple[int, torch.Size]]:
    """Parameter name to (partition dim, local shape) for Megatron-sharded parameters, at TP > 1."""
    from jevons.framework.tensor_parallel import tensor_parallel_size

    if tensor_parallel_size() == 1:
        return {}
    return {
        name: (int(p.partition_dim), p.shape)  # type: ignore[attr-defined]  # Megatron sets it on TP parameters
        for name, p in module.named_parameters()
        if getattr(p, "tensor_model_parallel", False)
    }


def _as_whole_tensors(held: dict[str, Any], sharding: dict[str, tuple[int, torch.Size]]) -> dict[str, Any]:
    """``held`` with every shard a DTensor over its whole tensor (new dicts: the state dict
    utilities hand back the optimizer's own per-parameter dicts)."""
    from torch.distributed.tensor import DTensor

    from jevons.framework.sharding import current_layout

    layout = current_layout()
    tensor_mesh = _tensor_parallel_mesh() if sharding and layout is None else None

    def whole(name: str, tensor: Any) -> Any:
        dim = sharding[name][0] if name in sharding else None
        if isinstance(tensor, DTensor) and layout is not None:  # FSDP's shard (of a TP shard)
            return layout.checkpoint_view(tensor, dim)
        if tensor_mesh is not None and dim is not None and isinstance(tensor, torch.Tensor):
            if tensor.shape == sharding[name][1]:  # a parameter-shaped tensor, not a step count
                return DTensor.from_local(tensor, tensor_mesh, [Shard(dim)], run_check=False)
        return tensor

    views: dict[str, Any] = {
        "model": {name: whole(name, t) for name, t in held["model"].items()},
        "optim": held["optim"],
    }
    optimizer_state = held["optim"].get("state", {})
    if optimizer_state:
        views["optim"] = {
            **held["optim"],
            "state": {
                name: {key: whole(name, value) for key, value in per_parameter.items()}
                for name, per_parameter in optimizer_state.items()
            },
        }
    return views


def _tensor_parallel_mesh() -> Any:
    from torch.distributed.device_mesh import DeviceMesh

    from jevons.framework.tensor_parallel import tensor_parallel_group

    group = tensor_parallel_group()
    assert group is not None, "TP > 1 has a tensor-parallel group"
    return DeviceMesh.from_group(group, device_type="cuda" if torch.cuda.is_available() else "cpu")


def _copy_back(views: Any, held: Any) -> None:
    """After DCP loaded into ``views`` in place: make sure ``held`` has the values (a view shares its
    storage, so this copies only where a state dict utility handed out a copy)."""
    from jevons.framework.sharding import local_tensor

    if isinstance(views, dict):
        for key, value in views.items():
            _copy_back(value, held[key])
        return
    if isinstance(views, torch.Tensor) and views is not held:
        source, target = local_tensor(views), local_tensor(held)
        if source.data_ptr() != target.data_ptr():
            target.copy_(source)


def _split(tree: Any) -> tuple[Any, Any]:
    """Tensors (for DCP) and everything else (for the weights_only file), same nesting."""
    if isinstance(tree, torch.Tensor):
        return tree, None
    if isinstance(tree, dict):
        tensors, others = {}, {}
        for key, value in tree.items():
            t, o = _split(value)
            if t is not None and (not isinstance(t, dict) or t):
                tensors[key] = t
            if o is not None and (not isinstance(o, dict) or o):
                others[key] = o
        return tensors, others
    return None, tree


def _merge(tensors: Any, others: Any) -> Any:
    if not isinstance(tensors, dict) or not isinstance(others, dict):
        return tensors if others is None else others
    merged = dict(others)
    for key, value in tensors.items():
        merged[key] = _merge(value, others.get(key)) if key in others else value
    return merged


def _serialize_safely(state: dict[str, Any]) -> bytes:
    """``torch.save`` bytes that ``weights_only=True`` can load; an error now beats an unloadable checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except pickle.UnpicklingError as error:
        raise TypeError(
            f"checkpoint state must hold only tensors, numbers, strings, lists, tuples and dicts: {error}"
        ) from error
    return buffer.getvalue()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- loading -----------------------------------------------------------------


def load_checkpoint(path: Path, module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, Any]:
    """Load model and optimizer state in place; return the rest of the saved state for this rank."""
    path = Path(path)
    if not is_complete(path):
        raise UsageError(f"{path} is not a complete checkpoint (no {MARKER} marker); use one listed under its parent.")
    rank, _ = _rank_world()
    state_file = path / f"state-rank{rank:05d}.pt"
    if not state_file.exists():  # loaded at another world size: global state is the same on every rank
        state_file = path / "state-rank00000.pt"
    try:
        state = torch.load(state_file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise UsageError(
            f"Refusing to load {state_file}: it holds more than tensors and plain data ({error})."
        ) from None

    reader = SafeFileSystemReader(path / "dcp")
    reader.read_metadata()  # refuse a tampered checkpoint here, with our message, before DCP wraps it
    views, held = _full_state(module, optimizers)  # initialises empty optimizer state to load into
    tensors, _ = _split(views)
    _check_keys(path, tensors, reader)
    _check_frozen(path, module, state.pop("frozen_sha256", None))
    dcp.load(tensors, storage_reader=reader, planner=_TensorsOnlyPlanner())
    _copy_back(tensors, held)
    tensors, _ = _split(held)
    # Not strict: frozen parameters are not in the checkpoint (the build made them, the digest checked them).
    options = StateDictOptions(flatten_optimizer_state_dict=False, strict=False)
    set_model_state_dict(module, tensors["model"], options=options)
    if optimizers:
        optim = _merge(tensors.get("optim", {}), state.pop("optimizer_extra", {}))
        set_optimizer_state_dict(module, list(optimizers), optim, options=options)
    return state


def frozen_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the model's frozen parameters (names, dtypes, shapes and bytes), in name order.

    Layout-independent: a tensor-parallel shard is hashed as the whole tensor (gathered over the
    tensor-parallel group), so every rank of every layout computes the same digest of the same base.
    Cached per module and invalidated by any in-place change that bumps a tensor's version counter,
    so a multi-gigabyte base is hashed once per run, not at every save.
    """
    frozen = sorted(((name, p) for name, p in module.named_parameters() if not p.requires_grad), key=lambda np: np[0])
    from jevons.framework.sharding import local_tensor

    # A DTensor's own data_ptr() is 0 and its version does not follow its local shard's.
    key = tuple((name, local_tensor(p).data_ptr(), local_tensor(p)._version) for name, p in frozen)
    cached = _DIGESTS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name, p in frozen:
        tensor = _whole(p).cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # the bytes, not a copy
    _DIGESTS[module] = (key, digest.hexdigest())
    return digest.hexdigest()


def _whole(parameter: torch.Tensor) -> torch.Tensor:
    """A tensor-parallel shard gathered into the whole tensor; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    from jevons.framework.tensor_parallel import tensor_parallel_group, tensor_parallel_size

    tensor = parameter.detach()
    if isinstance(tensor, DTensor):  # an FSDP shard: its tensor-parallel part, gathered
        tensor = tensor.full_tensor()
    size = tensor_parallel_size()
    if size == 1 or not getattr(parameter, "tensor_model_parallel", False):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=tensor_parallel_group())
    return torch.cat(parts, dim=int(parameter.partition_dim))  # type: ignore[attr-defined]  # set by Megatron


_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[tuple[str, int, int], ...], str]] = (
    weakref.WeakKeyDictionary()
)


def _check_frozen(path: Path, module: torch.nn.Module, saved: str | None) -> None:
    """Refuse to resume on frozen weights other than the ones the checkpoint was trained on."""
    if saved is None:  # a checkpoint from before frozen parameters were left out: it holds them
        return
    now = frozen_digest(module)
    if now != saved:
        raise UsageError(
            f"The frozen parameters of this model differ from those {path} was trained on (SHA-256 {saved[:12]}..., "
            f"now {now[:12]}...): the pretrained base (model.pretrained, text encoder or VAE folder) or the seed it "
            f"was initialised from changed since it was saved. Point the config at the base the run started from "
            f"({path / 'config.yaml'})."
        )


def _check_keys(path: Path, template: dict[str, Any], reader: SafeFileSystemReader) -> None:
    """Refuse, with the names, a checkpoint that lacks tensors the model trains (another plugin set,
    other LoRA targets), before DCP fails on the first one."""
    saved = set(reader.read_metadata().state_dict_metadata)
    wanted = set(_flat_names(template))
    missing = sorted(wanted - saved)
    if missing:
        raise UsageError(
            f"{path} does not hold {len(missing)} tensor(s) this model trains ({', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}): it was saved by a run with other plugins or trained parameters. "
            f"Resume with the config it was saved with ({path / 'config.yaml'})."
        )


def _flat_names(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """DCP's flattened keys of a nested dict of tensors (``model.layers.0.weight``)."""
    names: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        names += _flat_names(value, name + ".") if isinstance(value, dict) else [name]
    return names


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, refusing every global that is not plain checkpoint metadata."""

    _ALLOWED: ClassVar[dict[str, set[str]]] = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "pathlib": {"PosixPath", "PurePosixPath"},
        "collections": {"OrderedDict"},
        "torch": {"Size"},
    }

    def find_class(self, module: str, name: str) -> Any:
        if name in self._ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's reader, with its metadata pickle loaded through an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _RestrictedUnpickler(handle).load()
        except pickle.UnpicklingError as error:
            raise UsageError(f"Refusing to load {path}: {error}. The checkpoint may have been tampered with.") from None
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnlyPlanner(DefaultLoadPlanner):
    """Jevons checkpoints keep only tensors in DCP; a pickled object there is refused, not loaded."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise UsageError(
            f"Refusing to unpickle '{read_item.dest_index.fqn}' from a checkpoint: only tensors are expected."
        )


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
