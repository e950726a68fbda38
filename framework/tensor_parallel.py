"""A thin adapter over Megatron-Core's tensor-parallel layers: one code path at every TP size.

Families build their models from these, at TP=1 too (docs/architecture.md,
"Parallelism"). Megatron's linear layers return ``(output, bias)``; these
subclasses return the output alone, with the bias added, and keep Megatron's
parameter names (``weight``, ``bias``) and its partition attributes
(``tensor_model_parallel``, ``partition_dim``), which the checkpoint code and
Muon's tensor-parallel seam read.

Weights are initialised on the CPU from the full ("master") matrix and then
split (``use_cpu_initialization``), so a model built at TP=2 holds exactly the
shards of the model built at TP=1 from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Required, TypedDict, Unpack

import torch
from megatron.core import ModelParallelConfig, parallel_state, tensor_parallel


def megatron_config(params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """A Megatron layer config for the current tensor-parallel group, CPU initialisation on."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tensor_parallel_size(),
        use_cpu_initialization=True,
        params_dtype=params_dtype,
        sequence_parallel=False,
        gradient_accumulation_fusion=False,
    )


def tensor_parallel_size() -> int:
    """The TP size of the initialised ``parallel_state`` (1 when it is not initialised)."""
    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_tensor_model_parallel_world_size()


def tensor_parallel_rank() -> int:
    """This process's rank in its TP group (0 when ``parallel_state`` is not initialised)."""
    if not parallel_state.model_parallel_is_initialized():
        return 0
    return parallel_state.get_tensor_model_parallel_rank()


def tensor_parallel_group() -> torch.distributed.ProcessGroup | None:
    """The TP process group of the initialised ``parallel_state`` (None outside a run)."""
    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_tensor_model_parallel_group()


def normal_init(std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``N(0, std)`` initialisation, as Megatron's ``init_method_normal``."""

    def init(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)

    return init


def scaled_init(std: float, num_layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``N(0, std / sqrt(2 * num_layers))`` for projections into the residual stream (GPT-2)."""
    return normal_init(std / math.sqrt(2.0 * num_layers))


class LinearOptions(TypedDict, total=False):
    """What both parallel linears take besides their shape."""

    init_method: Required[Callable[[torch.Tensor], torch.Tensor]]
    bias: bool
    """Default False."""
    config: ModelParallelConfig | None
    """Default :func:`megatron_config`."""


def _megatron_options(options: LinearOptions) -> dict[str, Any]:
    return {
        "config": options.get("config") or megatron_config(),
        "init_method": options["init_method"],
        "bias": options.get("bias", False),
        "tp_group": tensor_parallel_group(),
    }


def _autocast_linear(
    impl: Callable[..., torch.Tensor], input: torch.Tensor, weight: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """Megatron's linear autograd function under the caller's autocast, on any device.

    Megatron decorates its linear functions with CUDA's ``custom_fwd``/``custom_bwd``, which replay
    *CUDA* autocast in backward. Under CPU autocast the forward matmul runs in bf16 while backward
    meets the fp32 weight it saved, and the first backward fails ("expected m1 and m2 to have the
    same dtype"). So cast input, weight and bias to the autocast dtype here, as autocast does for
    ``F.linear``: Megatron's function then sees one dtype in both passes, and the casts' own backward
    returns fp32 gradients to the fp32 master weights.
    """
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return impl(input=input, weight=weight, **kwargs)
    dtype = torch.get_autocast_dtype(device)
    if kwargs.get("bias") is not None:
        kwargs["bias"] = kwargs["bias"].to(dtype)
    with torch.autocast(device, enabled=False):
        return impl(input=input.to(dtype), weight=weight.to(dtype), **kwargs)


class ColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """``y = x W^T (+ b)`` with W split by output rows across TP ranks; returns ``y`` only.

    Input ``(..., in_features)`` replicated on every TP rank; output
    ``(..., out_features / tp)`` unless ``gather_output``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, gather_output: bool = False, **options: Unpack[LinearOptions]
    ) -> None:
        super().__init__(in_features, out_features, gather_output=gather_output, **_megatron_options(options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = super().forward(x)
        return output

    def _forward_impl(self, input: torch.Tensor, weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return _autocast_linear(super()._forward_impl, input, weight, **kwargs)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """``y = x W^T (+ b)`` with W split by input columns across TP ranks; returns ``y`` only.

    Input ``(..., in_features / tp)`` (the output of a ColumnParallelLinear);
    output ``(..., out_features)``, summed over TP ranks.
    """

    def __init__(self, in_features: int, out_features: int, **options: Unpack[LinearOptions]) -> None:
        super().__init__(
            in_features, out_features, input_is_parallel=True, skip_bias_add=False, **_megatron_options(options)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = super().forward(x)
        device = output.device.type
        if torch.is_autocast_enabled(device):  # Megatron adds the fp32 bias after the matmul: keep autocast's dtype
            output = output.to(torch.get_autocast_dtype(device))
        return output

    def _forward_impl(self, input: torch.Tensor, weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return _autocast_linear(super()._forward_impl, input, weight, **kwargs)


class VocabParallelEmbedding(tensor_parallel.VocabParallelEmbedding):
    """Token embedding with the vocabulary split across TP ranks; output replicated."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        init_method: Callable[[torch.Tensor], torch.Tensor],
        config: ModelParallelConfig | None = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            init_method=init_method,
            config=config or megatron_config(),
            tp_group=tensor_parallel_group(),
        )


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy from vocab-sharded logits ``(..., V / tp)``; returns ``target``'s shape."""
    return tensor_parallel.vocab_parallel_cross_entropy(logits, target)


def gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the TP ranks' shards along the last dimension (no autograd; for inference).

    Megatron's ``gather_from_tensor_model_parallel_region`` allocates on CUDA; this runs anywhere.
    """
    if tensor_parallel_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tensor_parallel_size())]
    torch.distributed.all_gather(parts, x.contiguous(), group=tensor_parallel_group())
    return torch.cat(parts, dim=-1)


def pad_vocab_size(vocab_size: int, multiple: int = 128) -> int:
    """Round the vocabulary up to a multiple of 128 that the TP size divides.

    Unlike Megatron's ``128 * tp``, the padded size does not change with the TP
    size for the usual power-of-two sizes, so a checkpoint reshards from TP=2 to
    TP=1 without a shape change.
    """
    step = math.lcm(multiple, tensor_parallel_size())
    return int(math.ceil(vocab_size / step) * step)
