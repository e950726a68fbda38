"""Dispatch by measurement: fake implementations of known speed (an injected clock, no sleeps) are timed,
checked against the op's reference, picked, cached per machine, pinned by a resumed run, and forced."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from jevons.framework.errors import UsageError
from jevons.kernels import dispatch
from jevons.kernels.dispatch import OpSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, ms: float, scale: float = 2.0):  # type: ignore[no-untyped-def]
        """An implementation of ``x -> 2 x`` (or ``scale x``) that takes ``ms`` milliseconds."""

        def implementation(x: torch.Tensor) -> torch.Tensor:
            self.now += ms / 1e3
            return scale * x

        return lambda: implementation


@pytest.fixture(autouse=True)
def fresh_dispatch():  # type: ignore[no-untyped-def]
    """Each test starts and leaves dispatch with nothing forced, no files and the real clock."""
    dispatch.force({})
    dispatch.use_files(None, None, resume=False)
    yield
    dispatch.force({})
    dispatch.use_files(None, None, resume=False)
    dispatch.configure(clock=time.perf_counter, measure_compiled=False)


@pytest.fixture
def fake_op(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """An op ``double`` with a slow, a fast and a fastest-but-wrong implementation, on a fresh registry."""
    for name in ("_REGISTRY", "_SPECS", "_LOADED", "_DECISIONS", "_FORCED"):
        monkeypatch.setattr(dispatch, name, {})
    monkeypatch.setattr(dispatch, "_SETTINGS", dispatch._Settings())
    clock = FakeClock()
    register = dispatch.registrar("tests")
    register.define("double", OpSpec(lambda x: 2 * x.float(), bound=1e-3))
    register("double", "slow", clock.costing(5.0), priority=10)
    register("double", "fast", clock.costing(1.0))
    register("double", "wrong", clock.costing(0.1, scale=2.1))  # 5% off: fastest, never picked
    dispatch.configure(clock=clock)
    dispatch.use_files(tmp_path / "cache" / "kernels.json", tmp_path / "run" / "kernels.json", resume=False)
    return clock, register, tmp_path


def test_the_fastest_accurate_implementation_is_picked_and_cached(fake_op) -> None:
    clock, _, root = fake_op
    x = torch.randn(100, 30)
    assert torch.equal(dispatch.call("double", x), 2 * x)
    (decision,) = dispatch.decisions("double")
    assert (decision.choice, decision.reason) == ("fast", "measured")
    cache = json.loads((root / "cache" / "kernels.json").read_text())
    (entries,) = cache["devices"].values()
    entry = entries["double|infer|cpu|float32[128,32]"]
    assert entry["choice"] == "fast"
    assert entry["candidates"]["slow"]["ms"] == pytest.approx(5.0)
    assert entry["candidates"]["fast"]["ms"] == pytest.approx(1.0)
    assert entry["candidates"]["wrong"]["error"] == pytest.approx(0.05, rel=1e-3)
    # Once decided, a call of the same shape class is a lookup: only the chosen implementation runs.
    before = clock.now
    dispatch.call("double", torch.randn(128, 17))
    assert clock.now - before == pytest.approx(1e-3)
    assert len(dispatch.decisions("double")) == 1
    # A new shape class is measured anew; the run file records both.
    dispatch.call("double", torch.randn(129, 30))
    assert len(dispatch.decisions("double")) == 2
    run = json.loads((root / "run" / "kernels.json").read_text())
    assert {v["choice"] for v in run["choices"].values()} == {"fast"}


def test_measuring_leaves_the_random_stream_where_a_cached_choice_would(fake_op) -> None:
    """A run on a machine that never measured must draw the same noise as one that found the choice
    cached (the first text-to-video run on a fresh machine once drew different timesteps from the rest)."""
    from jevons.kernels.choices import MachineCache
    from jevons.kernels.peak import peak_matmul_flops

    _, register, root = fake_op
    register("double", "noisy", lambda: lambda x: 2 * x + 0 * torch.randn(x.shape))  # draws from the global RNG
    torch.manual_seed(3)
    dispatch.call("double", torch.ones(8, 8))
    peak_matmul_flops(torch.device("cpu"), torch.float32, MachineCache(root / "peak.json"))
    measured = torch.rand(4)
    torch.manual_seed(3)
    dispatch.call("double", torch.ones(8, 8))  # decided: a lookup
    peak_matmul_flops(torch.device("cpu"), torch.float32, MachineCache(root / "peak.json"))  # cached
    assert torch.equal(torch.rand(4), measured)
    assert dispatch.decisions("double")[0].reason == "measured"


def test_a_forced_choice_wins_without_measuring(fake_op) -> None:
    clock, _, _ = fake_op
    dispatch.force({"double": "slow"})
    dispatch.call("double", torch.ones(4))
    assert clock.now == pytest.approx(5e-3)  # one call of the slow path, nothing timed
    (decision,) = dispatch.decisions("double")
    assert (decision.choice, decision.reason) == ("slow", "forced")
    with pytest.raises(UsageError, match="kernels.double='slwo': no such implementation. Did you mean 'slow'"):
        dispatch.force({"double": "slwo"})
    with pytest.raises(UsageError, match="'slow' offers compute dtypes none"):
        dispatch.force({"double": "slow:bfloat16"})


def test_the_cache_survives_a_restart_and_is_rebuilt_when_corrupt_or_stale(fake_op) -> None:
    clock, register, root = fake_op
    cache_path, run_path = root / "cache" / "kernels.json", root / "run" / "kernels.json"
    x = torch.randn(8, 8)
    dispatch.call("double", x)
    # A restart: new process state, same cache file. Even if the slow path became fastest, the cache answers.
    dispatch.force({})
    register("double", "slow", clock.costing(0.5), priority=10)
    dispatch.use_files(cache_path, run_path, resume=False)
    dispatch.call("double", x)
    assert [(d.choice, d.reason) for d in dispatch.decisions()] == [("fast", "cached")]
    # A corrupt file is ignored and rewritten by the next measurement.
    cache_path.write_text('{"format": 1, "devices": {')
    dispatch.force({})
    dispatch.use_files(cache_path, run_path, resume=False)
    dispatch.call("double", x)
    assert [(d.choice, d.reason) for d in dispatch.decisions()] == [("slow", "measured")]
    assert json.loads(cache_path.read_text())["format"] == 1
    # A new candidate makes the cached entry stale: measured again, over all of them.
    register("double", "fastest", clock.costing(0.2))
    dispatch.use_files(cache_path, run_path, resume=False)
    dispatch.call("double", x)
    assert [(d.choice, d.reason) for d in dispatch.decisions()] == [("fastest", "measured")]


def test_a_resumed_run_reuses_its_choices(fake_op) -> None:
    clock, register, root = fake_op
    run_path = root / "run" / "kernels.json"
    x = torch.randn(8, 8)
    dispatch.call("double", x)  # picks "fast" and records it in the run directory
    register("double", "slow", clock.costing(0.5), priority=10)  # now the slow path is faster
    dispatch.use_files(root / "other-machine.json", run_path, resume=True)
    dispatch.call("double", x)
    assert [(d.choice, d.reason) for d in dispatch.decisions()] == [("fast", "resumed")]


def test_a_path_without_a_backward_runs_inference_only(fake_op) -> None:
    clock, register, _ = fake_op
    register("double", "forward_only", clock.costing(0.3), trains=lambda: False)
    x = torch.randn(4, 4, requires_grad=True)
    with torch.no_grad():
        dispatch.call("double", x)
    dispatch.call("double", x).sum().backward()
    assert [(d.key.split("|")[1], d.choice) for d in dispatch.decisions()] == [
        ("infer", "forward_only"),
        ("train", "fast"),
    ]
    assert torch.equal(x.grad, torch.full((4, 4), 2.0))
    dispatch.force({"double": "forward_only"})  # forced: used where it can run, the others measured for training
    dispatch.call("double", x)
    with torch.no_grad():
        dispatch.call("double", x)
    assert [(d.choice, d.reason) for d in dispatch.decisions()] == [("fast", "cached"), ("forward_only", "forced")]


def test_measuring_time_is_accounted_once_per_shape_class(fake_op) -> None:
    before = dispatch.measuring_seconds()
    dispatch.call("double", torch.randn(3))
    measured = dispatch.measuring_seconds()
    assert measured > before
    for _ in range(5):
        dispatch.call("double", torch.randn(4))  # the same class: decided, nothing measured
    assert dispatch.measuring_seconds() == measured


def test_a_candidate_that_raises_or_has_a_wrong_backward_is_never_picked(fake_op) -> None:
    clock, register, _ = fake_op

    def broken() -> object:
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no kernel for this shape")

        return run

    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            return 2 * x

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def]
            return 3 * grad  # the forward is right, the gradient is not

    def wrong_backward() -> object:
        def run(x: torch.Tensor) -> torch.Tensor:
            clock.now += 1e-5
            return WrongBackward.apply(x)

        return run

    register("double", "broken", broken)
    register("double", "wrong_backward", wrong_backward)
    x = torch.randn(4, 4, requires_grad=True)
    dispatch.call("double", x)
    (decision,) = dispatch.decisions()
    assert decision.choice == "fast"
    assert decision.entry["candidates"]["broken"] == {"failed": "RuntimeError: no kernel for this shape"}
    assert decision.entry["candidates"]["wrong_backward"]["error"] == pytest.approx(0.5)  # |3 - 2| / 2
    with torch.no_grad():
        dispatch.call("double", x)  # inference compares outputs only: its forward is right and fastest
    assert dispatch.decisions()[-1].choice == "wrong_backward"


def test_no_candidate_within_the_bound_is_an_error_naming_each(monkeypatch) -> None:
    for name in ("_REGISTRY", "_SPECS", "_LOADED", "_DECISIONS", "_FORCED"):
        monkeypatch.setattr(dispatch, name, {})
    register = dispatch.registrar("tests")
    register.define("double", OpSpec(lambda x: 2 * x.float(), bound=1e-3))
    register("double", "off", lambda: lambda x: 2.1 * x)
    register("double", "worse", lambda: lambda x: 3 * x)
    with pytest.raises(RuntimeError, match=r"double\|infer\|cpu\|float32\[4\]: no candidate met the accuracy bound"):
        dispatch.call("double", torch.ones(4))


def test_compute_dtype_narrows_and_compiling_paths_are_skipped_for_inference(fake_op) -> None:
    clock, register, _ = fake_op
    register("double", "typed", clock.costing(0.5), dtypes=("float32", "bfloat16"))
    register("double", "compiled", clock.costing(0.01), compiles=True)
    names = [c.name for c in dispatch.candidates("double", training=False, dtype="bfloat16")]
    assert "typed:bfloat16" in names and "typed:float32" not in names
    with torch.no_grad():
        dispatch.call("double", torch.randn(4))
    (decision,) = dispatch.decisions()
    assert decision.entry["candidates"]["compiled"] == {"failed": "not measured: compiles on first call"}
    dispatch.configure(measure_compiled=True)  # benchmarks and `jevons kernels --measure --compiled`
    with torch.no_grad():
        dispatch.call("double", torch.randn(4))
    assert dispatch.decisions()[-1].choice == "compiled"


def test_a_resume_keeps_the_choices_it_has_not_met_again(fake_op) -> None:
    _, _, root = fake_op
    run_path = root / "run" / "kernels.json"
    dispatch.call("double", torch.randn(8))
    dispatch.call("double", torch.randn(300))
    first = json.loads(run_path.read_text())["choices"]
    dispatch.use_files(root / "cache" / "kernels.json", run_path, resume=True)
    dispatch.force({})
    dispatch.call("double", torch.randn(8))  # only one of the two classes met again
    assert sorted(json.loads(run_path.read_text())["choices"]) == sorted(first)


def test_newton_schulz_candidates_are_the_compute_dtypes() -> None:
    from jevons.framework.plugin_manager import PluginManager

    PluginManager.load(autoload=False)
    dispatch.force({})
    names = [c.name for c in dispatch.candidates("newton_schulz", training=False)]
    if not torch.cuda.is_available():
        assert names == ["reference:float32", "reference:bfloat16"]
        with pytest.raises(UsageError, match="'triton' is not available on this machine"):
            dispatch.force({"newton_schulz": "triton"})
            dispatch.candidates("newton_schulz", training=False)
    dispatch.force({"newton_schulz": "reference:float32"})
    assert [c.name for c in dispatch.candidates("newton_schulz", training=False)] == ["reference:float32"]
    dispatch.force({})
    # A measured choice on a real matrix: within the bound (bfloat16 is about 1.2e-2 from float32).
    dispatch.use_files(None, None, resume=False)
    G = torch.randn(96, 200)
    out = dispatch.call("newton_schulz", G)
    (decision,) = dispatch.decisions("newton_schulz")
    errors = {name: r.get("error") for name, r in decision.entry["candidates"].items()}
    assert errors["reference:float32"] < 1e-6 and 5e-3 < errors["reference:bfloat16"] < 2e-2
    reference = dispatch.spec("newton_schulz").reference(G)  # type: ignore[union-attr]
    assert (out - reference).norm() / reference.norm() < 2e-2
    dispatch.force({})


RANK_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from jevons.kernels import dispatch
from jevons.kernels.dispatch import OpSpec
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
now = [0.0]
def costing(ms):
    def run(x):
        now[0] += ms / 1e3
        return 2 * x
    return lambda: run
register = dispatch.registrar("tests")
register.define("double", OpSpec(lambda x: 2 * x.float(), bound=1e-3))
# Each rank's clock says a different path is faster: rank 0's decision must hold everywhere.
register("double", "a", costing(1.0 if rank == 0 else 9.0))
register("double", "b", costing(9.0 if rank == 0 else 1.0))
dispatch.configure(clock=lambda: now[0])
dispatch.call("double", torch.ones(3))
print("CHOICE", dispatch.decisions()[0].choice, flush=True)
dist.destroy_process_group()
"""


def test_rank_zero_decides_for_every_rank() -> None:
    with socket.socket() as probe:  # a free port for the two ranks' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env["OMP_NUM_THREADS"] = "1"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0]
    assert [line for out in outputs for line in out.splitlines() if line.startswith("CHOICE")] == ["CHOICE a"] * 2


def test_shape_classes_round_up_to_powers_of_two() -> None:
    key = dispatch.shape_class_key
    assert key("op", (torch.zeros(100, 30),), False) == key("op", (torch.zeros(128, 17),), False)
    assert key("op", (torch.zeros(129, 30),), False) != key("op", (torch.zeros(128, 30),), False)
    assert key("op", (torch.zeros(8),), False) != key("op", (torch.zeros(8, dtype=torch.bfloat16),), False)


def test_jevons_kernels_lists_implementations_and_what_was_picked(tmp_path, capsys) -> None:
    from jevons.framework.cli.jevons import main as jevons
    from jevons.framework.plugin_manager import PluginManager

    PluginManager.load(autoload=False)
    dispatch.force({})
    dispatch.use_files(tmp_path / "kernels.json", None, resume=False)
    dispatch.call("newton_schulz", torch.randn(64, 128))
    (decision,) = dispatch.decisions()
    assert jevons(["kernels", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "block_sparse_attention  gather" in out and "newton_schulz           reference" in out
    (row,) = [line for line in out.splitlines() if line.split()[:2] == ["newton_schulz", "infer"]]
    assert "float32[64,128]" in row and f"  {decision.choice}  " in row
    assert "reference:float32: " in row and "reference:bfloat16: " in row
    dispatch.use_files(None, None, resume=False)


def test_kernels_are_forced_from_the_command_line() -> None:
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, ["recipe=llm_tiny", "kernels.newton_schulz=reference:float32"])
    assert config.kernels == {"newton_schulz": "reference:float32"}
