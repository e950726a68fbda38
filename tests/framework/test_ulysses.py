"""Ulysses sequence parallelism (``parallel.ulysses``) for the diffusion transformer: real gloo runs.

Ulysses peers share their samples' tokens, read the same batch and draw the same noise, so a
Ulysses=2 run of two processes computes what one process computes, also when the sequence must
be padded to split (the one-process comparisons use 49 tokens: 25 per rank, one of them padding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jevons.framework.config.compose import compose_config
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager

SPARSE = [
    "plugins=[block_sparse_attention]",
    "block_sparse_attention.block_size=4",
    "block_sparse_attention.max_density=0.5",
]


@pytest.fixture(scope="module")
def runs(gloo_runs) -> Path:
    return gloo_runs.root


@pytest.fixture(scope="module")
def run(gloo_runs, tiny_diffusion_20: list[str]):
    def call(name: str, *overrides: str) -> dict[int, float]:
        return gloo_runs(name, [*tiny_diffusion_20, *overrides])

    return call


def _close(a: dict[int, float], b: dict[int, float], tolerance: float) -> None:
    assert a.keys() == b.keys() and len(a) == 20
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tolerance, f"largest per-step loss difference {worst:.3g} > {tolerance}"


PADDED = ["data.resolution=14"]  # 7 x 7 = 49 tokens: padded to 50, the last rank's 25th token padding


@pytest.mark.parametrize("attention", ["dense", "block_sparse"])
def test_ulysses2_with_padding_equals_one_process_for_20_steps(run, runs: Path, attention: str) -> None:
    plugins = ["plugins=[block_sparse_attention,jt_dump_state]", *SPARSE[1:]] if attention == "block_sparse" else []
    plugins = [*(plugins or ["plugins=[jt_dump_state]"]), *PADDED]
    single = run(f"one-{attention}", *plugins)
    split = run(f"ulysses2-{attention}", *plugins, "launcher.nproc=2", "parallel.ulysses=2")
    _close(split, single, 1e-5)
    # The gradients, not only the losses (AdamW barely sees a wrong constant scale, such as a missing x u).
    whole = torch.load(runs / f"one-{attention}" / "state-rank0.pt", weights_only=True)["grads"]
    for rank in range(2):
        grads = torch.load(runs / f"ulysses2-{attention}" / f"state-rank{rank}.pt", weights_only=True)["grads"]
        assert grads.keys() == whole.keys()
        for name, value in whole.items():
            torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-7)


def test_ulysses2_by_data_parallel2_equals_ddp(run) -> None:
    """With data parallelism beside it: DDP over data-parallel x Ulysses ranks, Ulysses peers drawing
    their data-parallel rank's noise. Noise is drawn per data-parallel rank, so the reference is
    DDP at 2 ranks, not one process."""
    ddp = run("diffusion-ddp2", "launcher.nproc=2")  # the sharding tests' reference too
    both = run("ddp2-ulysses2", "launcher.nproc=4", "parallel.ulysses=2")
    _close(both, ddp, 1e-5)


def test_impossible_ulysses_layouts_are_refused_at_config_time(tiny_diffusion_20: list[str]) -> None:
    manager = PluginManager.load(autoload=False)
    refusals = {
        r"parallel.tensor=2 x ulysses=2 = 4 must divide model.num_heads=2": [
            "model.num_heads=2",
            "parallel.tensor=2",
            "parallel.ulysses=2",
            "launcher.nproc=4",
        ],
        r"tensor=1 x pipeline=1 x context=1 x ulysses=2 = 2 does not divide the world of 3": [
            "parallel.ulysses=2",
            "launcher.nproc=3",
        ],
        r"parallel.ulysses=2 with parallel.shard=2": ["parallel.ulysses=2", "parallel.shard=2", "launcher.nproc=4"],
    }
    for message, overrides in refusals.items():
        with pytest.raises(UsageError, match=message):
            compose_config(manager, [*tiny_diffusion_20, *overrides])
    with pytest.raises(UsageError, match=r"Family 'llm' does not implement ulysses parallelism"):
        compose_config(manager, ["recipe=llm_tiny", "parallel.ulysses=2", "launcher.nproc=2"])
