"""LoRA on Jevons' Megatron tensor-parallel linears, as peft custom layers.

peft's own Megatron layer (``LoraParallelLinear``) unpacks ``result, bias =
base_layer(x)``; Jevons' parallel linears return the output alone, so on a
batch of 2 it would split the batch into "result" and "bias" instead of
failing. These two classes are peft ``lora.Linear`` layers (so peft injects,
names, freezes, enables, disables and merges them like any other) whose LoRA
path respects the sharding of the base layer:

* **Column-parallel** ``W`` (output rows split): ``A`` (r x in) is replicated,
  ``B`` (out / tp x r) is split like ``W``. ``A x`` is computed on every rank and
  passed through Megatron's copy-to-region (identity forward, all-reduce of the
  gradient), so ``A`` and the input receive the gradient of every rank's ``B``.
* **Row-parallel** ``W`` (input columns split, input already sharded): ``A``
  (r x in / tp) is split like ``W``, ``B`` (out x r) is replicated; the partial
  ``A x`` products are summed over the group before ``B``.

The sharded factor carries Megatron's partition attributes, so checkpoints
store it whole and gradient clipping counts each shard once. At TP=1 both are
exactly peft's ``lora.Linear``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from jevons.framework.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    tensor_parallel_group,
    tensor_parallel_size,
)


class _ParallelLoRA(LoraLinear):
    """What the column and row variants share: local LoRA shapes and a forward with one collective."""

    sharded_factor: str
    """``"lora_A"`` or ``"lora_B"``: the factor split across tensor-parallel ranks."""
    partition_dim: int

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        out_local, in_local = cast(torch.Tensor, module.weight).shape  # this rank's shard of W
        return self._lora_features(int(in_local), int(out_local))

    def _lora_features(self, in_local: int, out_local: int) -> tuple[int, int]:
        raise NotImplementedError

    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().update_layer(adapter_name, *args, **kwargs)
        factor = getattr(self, self.sharded_factor)[adapter_name]
        set_tensor_model_parallel_attributes(factor.weight, is_parallel=True, dim=self.partition_dim, stride=1)

    def _between(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        result = self.base_layer(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = cast(nn.Linear, self.lora_A[name]), self.lora_B[name]
            hidden = lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))
            result = result + (lora_b(self._between(hidden)) * self.scaling[name]).to(result.dtype)
        return result


class ColumnParallelLoRA(_ParallelLoRA):
    """LoRA on a :class:`~jevons.framework.tensor_parallel.ColumnParallelLinear`: ``B`` split by rows."""

    sharded_factor = "lora_B"
    partition_dim = 0

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        if getattr(base_layer, "gather_output", False):
            raise ValueError("LoRA on a ColumnParallelLinear with gather_output=True is not supported")
        super().__init__(base_layer, adapter_name, **kwargs)

    def _lora_features(self, in_local: int, out_local: int) -> tuple[int, int]:
        return in_local, out_local  # the input is whole, the output this rank's rows

    def _between(self, hidden: torch.Tensor) -> torch.Tensor:
        if tensor_parallel_size() == 1:
            return hidden
        return copy_to_tensor_model_parallel_region(hidden, group=tensor_parallel_group())


class RowParallelLoRA(_ParallelLoRA):
    """LoRA on a :class:`~jevons.framework.tensor_parallel.RowParallelLinear`: ``A`` split by columns."""

    sharded_factor = "lora_A"
    partition_dim = 1

    def _lora_features(self, in_local: int, out_local: int) -> tuple[int, int]:
        return in_local, out_local  # the input is this rank's columns, the output whole

    def _between(self, hidden: torch.Tensor) -> torch.Tensor:
        if tensor_parallel_size() == 1:
            return hidden
        return reduce_from_tensor_model_parallel_region(hidden, group=tensor_parallel_group())


CUSTOM_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    ColumnParallelLinear: ColumnParallelLoRA,
    RowParallelLinear: RowParallelLoRA,
}
"""What peft's ``LoraConfig._register_custom_module`` is given: Jevons' parallel linears to their LoRA layers."""
