"""This process' place in a multi-process job, from torchrun's or Slurm's variables (no torch: the
data importer reads it too)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessEnv:
    rank: int
    world_size: int
    local_rank: int


def process_env() -> ProcessEnv:
    """This process' rank, world size and local rank, from torchrun's or Slurm's variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return ProcessEnv(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
        )
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        return ProcessEnv(
            int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", "0"))
        )
    return ProcessEnv(0, 1, 0)
