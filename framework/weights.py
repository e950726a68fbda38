"""Reading a released checkpoint's tensors by name, a tensor-parallel rank's slice at a time.

A Hugging Face or diffusers folder stores its weights as one safetensors file
(``model.safetensors``, ``diffusion_pytorch_model.safetensors``) or as shards
named by an index (``*.safetensors.index.json``, its ``weight_map``). A
:class:`WeightFiles` opens them with ``safe_open`` and reads a tensor, or a
contiguous block of one dimension, with ``get_slice``: a rank loading its
shard of a model reads only that block, never a full copy (torchtitan's and
Megatron's sharded loading).

A pickle checkpoint (``pytorch_model.bin``) is read only through
``torch.load(weights_only=True, mmap=True)``: memory-mapped, so slicing it
copies only the slice, and an object pickle (which could run code) is refused.

:func:`load_parameters` fills a model built on the meta device, parameter by
parameter, from a plan saying where each comes from; :func:`partition_of`
reads which dimension Megatron's tensor-parallel layers split a parameter on.

Under ``parallel.shard`` the build defers the plan (:func:`deferred_loading`):
the model stays on the meta device through the model-changing hooks and
FSDP2's ``fully_shard``; :func:`take_deferred` collects the plans before
sharding and its :class:`DeferredLoad` fills each rank's shards after, so a
rank holds its shards of the model plus one tensor's TP block at a time (and
a copy of the few tensors that already had values, a plugin's adapters),
never the model (torchtitan's meta-device initialisation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jevons.framework.errors import UsageError

PICKLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin")


class WeightFiles:
    """The tensors of one checkpoint (a file, or the shards an index names), read by name."""

    def __init__(self, files: Mapping[str, Path], description: str) -> None:
        self.description = description
        self._file_of = dict(files)  # tensor name -> file
        self._handles: dict[Path, Any] = {}
        self._pickles: dict[Path, dict[str, torch.Tensor]] = {}

    @classmethod
    def find(cls, folder: Path, stem: str = "model") -> WeightFiles:
        """``stem.safetensors``, its sharded index, or (refusing object pickles) ``pytorch_model.bin``."""
        folder = Path(folder)
        single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
        if single.is_file():
            return cls.from_safetensors([single], str(single))
        if index.is_file():
            return cls.from_index(index)
        for name in PICKLE_NAMES:
            if (folder / name).is_file():
                return cls.from_pickle(folder / name)
        present = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
        raise UsageError(
            f"{folder} holds no weights: expected {single.name}, {index.name} with its shards, or a "
            f"weights-only pytorch_model.bin; found {present}."
        )

    @classmethod
    def from_safetensors(cls, paths: Iterable[Path], description: str) -> WeightFiles:
        from safetensors import safe_open

        files: dict[str, Path] = {}
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    files.update(dict.fromkeys(handle.keys(), path))
            except Exception as error:  # safetensors raises its own SafetensorError for a damaged header
                raise UsageError(f"{path} is not a readable safetensors file: {error}") from None
        return cls(files, description)

    @classmethod
    def from_index(cls, index: Path) -> WeightFiles:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UsageError(f"{index} is not a safetensors index (no 'weight_map'): {error}") from None
        shards = {index.parent / name for name in weight_map.values()}
        missing = sorted(p.name for p in shards if not p.is_file())
        if missing:
            raise UsageError(f"{index} names shards that are not in {index.parent}: {missing[:5]}.")
        files = cls.from_safetensors(sorted(shards), str(index))
        unlisted = set(weight_map) - set(files._file_of)
        if unlisted:
            raise UsageError(f"{index} maps tensors its shards do not hold: {sorted(unlisted)[:5]}.")
        return files

    @classmethod
    def from_pickle(cls, path: Path) -> WeightFiles:
        import zipfile

        if not zipfile.is_zipfile(path):  # torch.save's format before 1.6: it cannot be memory-mapped
            raise UsageError(
                f"{path} is in torch.save's legacy (pre-1.6, not zip) format, which Jevons does not read. Convert it "
                f"to safetensors where it was made (model.save_pretrained(dir, safe_serialization=True))."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # weights_only's UnpicklingError names the global it refused
            raise UsageError(
                f"{path} is a pickle that torch.load(weights_only=True) refuses, so loading it could run code: "
                f"{type(error).__name__}: {str(error).splitlines()[0]}. Convert it to safetensors where it was "
                f"made (model.save_pretrained(dir, safe_serialization=True))."
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UsageError(f"{path} is not a state dict of tensors (found {type(state).__name__}).")
        files = cls(dict.fromkeys(state, path), str(path))
        files._pickles[path] = state
        return files

    @property
    def names(self) -> set[str]:
        return set(self._file_of)

    def _slice(self, name: str) -> Any:
        if name not in self._file_of:
            raise UsageError(f"{self.description} has no tensor {name!r}.")
        path = self._file_of[name]
        if path in self._pickles:
            return self._pickles[path][name]
        if path not in self._handles:
            from safetensors import safe_open

            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        part = self._slice(name)
        return tuple(part.shape if isinstance(part, torch.Tensor) else part.get_shape())

    def dtype(self, name: str) -> torch.dtype:
        part = self._slice(name)
        if isinstance(part, torch.Tensor):
            return part.dtype
        return _SAFETENSORS_DTYPES[part.get_dtype()]

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Tensor ``name``, or only ``[start:stop]`` along ``dim``, as a new tensor in its stored dtype."""
        part = self._slice(name)
        if dim is None:
            return part[...] if not isinstance(part, torch.Tensor) else part.clone()
        index = (slice(None),) * dim + (slice(start, stop),)
        block = part[index]
        return block.clone() if isinstance(part, torch.Tensor) else block

    def read_partition(
        self, name: str, dim: int | None, rank: int, size: int, padded: int | None = None
    ) -> torch.Tensor:
        """Rank ``rank`` of ``size``'s contiguous block of ``name`` along ``dim`` (the whole tensor when ``dim``
        is None), the tensor first zero-padded along ``dim`` to ``padded`` (a vocabulary padded for TP)."""
        if dim is None:
            return self.read(name)
        full = padded if padded is not None else self.shape(name)[dim]
        if full % size:
            raise ValueError(f"{name}: {full} along dim {dim} does not split over {size} ranks")
        begin, end = rank * full // size, (rank + 1) * full // size
        stored = self.shape(name)[dim]
        block = self.read(name, dim, min(begin, stored), min(end, stored))
        if block.shape[dim] < end - begin:  # rows past the checkpoint's: padding, zero
            pad_shape = list(block.shape)
            pad_shape[dim] = end - begin - block.shape[dim]
            block = torch.cat([block, block.new_zeros(pad_shape)], dim=dim)
        return block


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def partition_of(param: torch.Tensor) -> int | None:
    """The dimension Megatron's tensor-parallel layers split ``param`` on, None when it is replicated."""
    if getattr(param, "tensor_model_parallel", False):
        return int(getattr(param, "partition_dim"))  # noqa: B009 (an attribute Megatron sets, unknown to torch's stubs)
    return None


def load_parameters(
    model: torch.nn.Module,
    plan: Mapping[str, Callable[[], torch.Tensor]],
    source: str,
    device: torch.device | str = "cpu",
) -> None:
    """Materialise ``model`` (built on the meta device) on ``device`` and fill every parameter from ``plan``
    (name -> a function reading its local block), one tensor in memory at a time beside the model.

    A parameter the plan lacks, or a block whose shape is not the parameter's, is an error naming both
    and ``source``; values are cast to the parameter's dtype. Inside :func:`deferred_loading` the model
    stays on the meta device with the plan attached, for :func:`take_deferred`.
    """
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:  # to_empty would leave them uninitialised
        raise ValueError(f"load_parameters fills parameters only; the model has buffers {buffers[:5]}")
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(plan))
    if missing:
        raise UsageError(f"{source}: nothing to load into {missing[:5]} ({len(missing)} parameters).")
    if _deferral.active:
        setattr(model, _PENDING, _Pending(dict(plan), source, params))
        _deferral.attached += 1
        return
    model.to_empty(device=device)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(_checked(plan[name](), name, param.shape, source))


@dataclass
class _Pending:
    plan: dict[str, Callable[[], torch.Tensor]]
    source: str
    params: dict[str, torch.nn.Parameter]
    """The meta parameters the plan fills, by their names when it was deferred: a hook may move one
    (peft puts a LoRA-adapted linear's weight under ``base_layer``), so they are found again by identity."""


_PENDING = "_jevons_deferred_weights"


class _Deferral:
    active = False
    attached = 0
    """Plans attached since :func:`deferred_loading` was entered: :func:`take_deferred` must find them all."""


_deferral = _Deferral()


@contextmanager
def deferred_loading(active: bool = True) -> Iterator[None]:
    """Inside, :func:`load_parameters` only attaches its plan: the model stays on the meta device until
    :func:`take_deferred` collects the plans and :meth:`DeferredLoad.load` fills the sharded model."""
    previous, _deferral.active = _deferral.active, active
    if active:
        _deferral.attached = 0
    try:
        yield
    finally:
        _deferral.active = previous


@dataclass
class DeferredLoad:
    """The deferred plans of one model, keyed by its parameters' current names."""

    readers: dict[str, tuple[Callable[[], torch.Tensor], str]]
    """Parameter name -> (its block's reader, the source named in errors)."""

    def load(self, model: torch.nn.Module, device: torch.device | str) -> int:
        """Materialise every tensor of ``model`` (sharded by now) on ``device`` (``Module.to_empty``), give
        each planned parameter its block (for an FSDP ``DTensor``, this rank's rows of it, cut as FSDP cuts
        them), and give every tensor that held values before them back (a plugin's adapters, buffers).
        One block is in memory at a time. Returns the number of parameters loaded."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        from jevons.framework.sharding import local_tensor as _local

        held = {
            name: _local(t).detach().clone() for name, t in _tensors(model) if not t.is_meta
        }  # kept through to_empty
        attributes = {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}
        model.to_empty(device=device)  # Module._apply: DTensor parameters keep their objects, lose attributes
        for name, values in attributes.items():
            parameter = model.get_parameter(name)
            for key, value in values.items():
                setattr(parameter, key, value)
        with torch.no_grad():
            tensors = dict(_tensors(model))
            for name, value in held.items():
                _local(tensors[name]).copy_(value)
            for name, (read, source) in self.readers.items():
                param = tensors[name]
                block = _checked(read(), name, param.shape, source).to(param.dtype)
                if isinstance(param, DTensor):  # this rank's rows, as FSDP cut the (tensor-parallel) whole
                    block = distribute_tensor(block, param.device_mesh, param.placements, src_data_rank=None)
                _local(param).copy_(_local(block))
                del block
        return len(self.readers)


def take_deferred(model: torch.nn.Module) -> DeferredLoad | None:
    """Collect the plans :func:`deferred_loading` left on ``model``'s modules, after the model-changing
    hooks and before sharding (None: nothing deferred). A planned parameter a hook removed is not
    loaded; a parameter still on the meta device that no plan fills (one a hook made on the unloaded
    weights' device, ``empty_like(weight)``, without values) is refused by name."""
    pending = [(m, p) for m in model.modules() if (p := getattr(m, _PENDING, None)) is not None]
    if len(pending) != _deferral.attached:  # a family kept a loaded module outside the model it returned
        raise RuntimeError(
            f"deferred loading: {_deferral.attached} plan(s) were deferred during the build, {len(pending)} are in "
            f"the model; a module loaded outside it would stay on the meta device"
        )
    _deferral.attached = 0
    if not pending:
        return None
    now = {id(p): name for name, p in model.named_parameters()}
    readers: dict[str, tuple[Callable[[], torch.Tensor], str]] = {}
    for module, deferred in pending:
        for name, param in deferred.params.items():
            if id(param) in now:
                readers[now[id(param)]] = (deferred.plan[name], deferred.source)
        delattr(module, _PENDING)
    stray = [name for name, t in _tensors(model) if t.is_meta and name not in readers]  # to_empty leaves no values
    if stray:
        raise UsageError(
            f"{pending[0][1].source}: parameters {stray[:5]} ({len(stray)} in all) are on the meta device and in "
            f"no load plan: a model-changing plugin made them on the device of weights that, under parallel.shard, "
            f"are loaded only after sharding (the meta device). Train without parallel.shard, or without that plugin."
        )
    return DeferredLoad(readers)


def _tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _checked(block: torch.Tensor, name: str, shape: torch.Size, source: str) -> torch.Tensor:
    if tuple(block.shape) != tuple(shape):
        raise UsageError(
            f"{source}: the block read for {name} has shape {tuple(block.shape)}, the model's parameter "
            f"{tuple(shape)}: the folder's config.json and its weights disagree."
        )
    return block
