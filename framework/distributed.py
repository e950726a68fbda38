"""Process groups: ``torch.distributed`` from the environment, then Megatron-Core's ``parallel_state``.

Step 3 of a run's lifecycle (docs/architecture.md): in every process, before any model is
built. The environment is torchrun-style (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) or Slurm-style
(``SLURM_PROCID``, ``SLURM_NTASKS``); a process with neither is a world of one,
given an in-memory store so it needs no port. The Lightning strategy adopts
these groups and never creates its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.process_env import ProcessEnv, process_env

__all__ = ["ProcessEnv", "initialized", "process_env"]


def check_parallel_sizes(parallel: ParallelConfig, world_size: int, cuda: bool) -> int:
    """Validate the parallel sizes against the world and the device; return the data-parallel size."""
    from jevons.framework.config.compose import check_model_parallel, model_parallel_size

    check_model_parallel(parallel, world_size)
    model_parallel = model_parallel_size(parallel)
    if not cuda:
        unsupported = [
            name
            for name, on in (
                ("parallel.pipeline", parallel.pipeline > 1),
                ("parallel.context", parallel.context > 1),
                ("parallel.expert", parallel.expert > 1),
                ("parallel.sequence", parallel.sequence),
            )
            if on
        ]
        if unsupported:
            raise UsageError(
                f"{', '.join(unsupported)} need CUDA: Megatron-Core runs pipeline, context, expert and sequence "
                f"parallelism only on GPUs. On CPU use parallel.tensor and data parallelism."
            )
    return world_size // model_parallel


@contextmanager
def initialized(parallel: ParallelConfig) -> Iterator[ProcessEnv]:
    """Initialise torch.distributed and Megatron's parallel_state; tear down what this call set up."""
    from megatron.core import parallel_state

    env = process_env()
    cuda = torch.cuda.is_available()
    check_parallel_sizes(parallel, env.world_size, cuda)
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if cuda else "gloo"
        if env.world_size == 1 and "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    if cuda:
        torch.cuda.set_device(env.local_rank)
    megatron_created = not parallel_state.model_parallel_is_initialized()
    if megatron_created:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor,
            pipeline_model_parallel_size=parallel.pipeline,
            # Ulysses peers are Megatron's context-parallel group: out of the data-parallel group, same batch.
            context_parallel_size=parallel.context * parallel.ulysses,
            expert_model_parallel_size=parallel.expert,
        )
    try:
        yield env
    finally:
        from jevons.framework.sharding import forget_layout

        forget_layout()  # its meshes belong to the groups torn down here
        if megatron_created:
            parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


def seed_processes(seed: int) -> None:
    """Seed every process before the build, then per data-parallel rank after it.

    Before the build all ranks share one seed, so replicated weights start equal
    and Megatron's CPU initialisation cuts tensor-parallel shards from the same
    full matrix. After it, data-parallel ranks draw different streams (they
    see different data) while tensor-parallel peers keep the same one (they
    must, for example, draw the same noise for the same sample). Megatron's
    CUDA RNG tracker, used for dropout inside tensor-parallel regions, is
    seeded its own way on GPUs.
    """
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def seed_after_build(seed: int) -> None:
    from megatron.core import parallel_state

    rank, _ = data_parallel_rank_and_size()
    torch.manual_seed(seed + 1_000_003 * rank)
    if torch.cuda.is_available() and parallel_state.model_parallel_is_initialized():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed + 1_000_003 * rank)


def data_parallel_rank_and_size() -> tuple[int, int]:
    """This process' position in Megatron's data-parallel group ((0, 1) outside a run)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def broadcast_from_rank_zero(value: tuple[Any, ...], key: str) -> tuple[Any, ...]:
    """Rank 0's ``value`` on every rank; ``value[0]`` must equal ``key`` everywhere (the ranks are
    deciding the same thing), else the run stops naming both rather than computing different things."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    received = holder[0]
    if received[0] != key:
        raise RuntimeError(
            f"rank {dist.get_rank()} was deciding {key!r} while rank 0 decided {received[0]!r}: the ranks "
            "called a dispatched kernel with different shapes in a different order."
        )
    return tuple(received)
