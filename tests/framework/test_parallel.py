"""Tensor and data parallelism on CPU with gloo: real multi-process runs through `train launcher.nproc=N`.

Each run is a real `train` command whose launcher starts the processes; losses
come from the run's metrics.csv. A small test plugin, installed as a real
entry point, dumps every rank's parameter shards at the end of training.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.checkpoint import load_checkpoint
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.module import JevonsModule
from jevons.framework.optim import Optimization, default_optimizer
from jevons.framework.plugin_manager import PluginManager

TINY = [
    "recipe=llm_tiny",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.num_workers=0",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel-runs")


@pytest.fixture(scope="module")
def run(command, plugin_site: Path, runs: Path):
    """``run(name, *overrides)``: a `train` command into ``runs/name``; returns its losses by step."""

    def call(name: str, *overrides: str) -> dict[int, float]:
        result = command(["train", *TINY, *overrides, f"run.dir={runs / name}"], cwd=runs, PYTHONPATH=str(plugin_site))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        with open(runs / name / "metrics.csv") as handle:
            return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}

    return call


def _close(a: dict[int, float], b: dict[int, float], tolerance: float) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tolerance, f"largest per-step loss difference {worst:.3g} > {tolerance}"


ADAMW_20 = ["trainer.max_steps=20", "data.batch_size=4", "plugins=[jt_dump_state]", "checkpoint.every_n_steps=20"]


@pytest.fixture(scope="module")
def adamw_tp1_and_tp2(run) -> tuple[dict[int, float], dict[int, float]]:
    return run("adamw-tp1", *ADAMW_20), run("adamw-tp2", *ADAMW_20, "launcher.nproc=2", "parallel.tensor=2")


def test_tp2_on_two_processes_equals_tp1_with_adamw(adamw_tp1_and_tp2) -> None:
    single, split = adamw_tp1_and_tp2
    _close(split, single, 1e-5)


def test_tp2_on_two_processes_equals_tp1_with_muon(run) -> None:
    common = [
        "trainer.max_steps=20",
        "data.batch_size=4",
        "plugins=[muon]",
        "muon.ns_dtype=float32",
        "checkpoint.every_n_steps=20",
    ]
    _close(run("muon-tp2", *common, "launcher.nproc=2", "parallel.tensor=2"), run("muon-tp1", *common), 1e-5)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_at_tp2_equals_tp1(run, precision: str) -> None:
    """Megatron's linears under CPU autocast (bf16-mixed crashed on the first backward) and in bf16
    weights: TP=2 follows TP=1 within bf16's rounding (the split changes the order of the sums)."""
    common = ["trainer.max_steps=10", "data.batch_size=4", f"trainer.precision={precision}", "optimizer.lr=1e-2"]
    single = run(f"{precision}-tp1", *common)
    split = run(f"{precision}-tp2", *common, "launcher.nproc=2", "parallel.tensor=2")
    worst = max(abs(split[k] - single[k]) / single[k] for k in single)
    assert split.keys() == single.keys() and worst <= {"bf16-mixed": 3e-3, "bf16-true": 5e-2}[precision], worst


def test_lora_at_tp2_equals_tp1_at_an_odd_batch(run, runs: Path, plugin_site: Path, monkeypatch) -> None:
    """Adapters on every parallel linear: column B and row A sharded, the collectives in their paths.
    Batch 3, because a layer that unpacked ``(output, bias)`` from one tensor would split a batch of 2."""
    common = [
        "trainer.max_steps=10",
        "data.batch_size=3",
        "plugins=[lora,jt_dump_state]",
        "lora.rank=4",
        "optimizer.lr=3e-2",
        "checkpoint.every_n_steps=10",
    ]
    _close(run("lora-tp2", *common, "launcher.nproc=2", "parallel.tensor=2"), run("lora-tp1", *common), 1e-5)
    # The trained adapters themselves: the losses of 10 steps barely move with B starting at zero.
    full = torch.load(runs / "lora-tp1" / "state-rank0.pt", weights_only=True)["params"]
    ranks = [torch.load(runs / "lora-tp2" / f"state-rank{r}.pt", weights_only=True)["params"] for r in range(2)]
    adapters = [name for name in full if ".lora_" in name]
    assert len(adapters) == 24  # A and B of q, k, v, proj, gate_up and down in two blocks
    column = ("q", "k", "v", "gate_up")  # B split by rows there; A split by columns in proj and down
    sharded = {name for name in adapters if ranks[0][name][0] is not None}
    assert sharded == {n for n in adapters if (".lora_B." in n) == (n.split(".")[3] in column)}
    for name in adapters:
        dim = ranks[0][name][0]
        whole = ranks[0][name][1] if dim is None else torch.cat([r[name][1] for r in ranks], dim=dim)
        assert full[name][1].abs().max() > 0
        torch.testing.assert_close(whole, full[name][1], atol=1e-5, rtol=0)
    # The frozen base's digest is of whole tensors: the TP=2 checkpoint loads into one process.
    from jevons.framework.inference import load_run

    monkeypatch.syspath_prepend(str(plugin_site))  # the run's jt_dump_state plugin, found as an entry point
    with distributed.initialized(ParallelConfig()):
        loaded = dict(load_run(runs / "lora-tp2").model.named_parameters())
    for name in adapters:
        torch.testing.assert_close(loaded[name].detach(), full[name][1], atol=1e-5, rtol=0)


def test_each_rank_holds_one_over_tp_of_every_sharded_weight(adamw_tp1_and_tp2, runs: Path) -> None:
    ranks = [torch.load(runs / "adamw-tp2" / f"state-rank{r}.pt", weights_only=True)["params"] for r in range(2)]
    full = torch.load(runs / "adamw-tp1" / "state-rank0.pt", weights_only=True)["params"]
    sharded = {name: dim for name, (dim, _) in ranks[0].items() if dim is not None}
    assert set(sharded) == {
        name
        for name in full
        if name.endswith(("q.weight", "k.weight", "v.weight", "proj.weight", "gate_up.weight", "down.weight"))
    } | {"embed.weight", "head.weight"}
    for name, dim in sharded.items():
        for rank in ranks:
            assert rank[name][1].shape[dim] * 2 == full[name][1].shape[dim]  # the work is split, not replicated
            assert rank[name][1].numel() * 2 == full[name][1].numel()
    assert ranks[0]["layers.0.attn.q.weight"][1].shape == (32 // 2, 32)  # 2 of the 4 heads' queries
    assert ranks[0]["layers.0.ffn.down.weight"][1].shape == (32, 96 // 2)  # row-parallel: split by input columns
    replicated = [name for name, (dim, _) in ranks[0].items() if dim is None]
    assert replicated and all(torch.equal(ranks[0][n][1], ranks[1][n][1]) for n in replicated)


def test_tp2_dp2_on_four_processes_equals_one_process_with_the_same_global_batch(run) -> None:
    single = run("global-batch-1proc", "trainer.max_steps=10", "data.batch_size=8")
    split = run(
        "global-batch-4proc", "trainer.max_steps=10", "data.batch_size=4", "launcher.nproc=4", "parallel.tensor=2"
    )
    _close(split, single, 1e-5)


def _load_full(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint into a TP=1 llm model in this process; its parameters by name."""
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [*TINY, "trainer.max_steps=8"])
    with distributed.initialized(ParallelConfig()):
        family = manager.family("llm")
        model = family.build_model(config)
        optimizer = default_optimizer(model, config)
        module = JevonsModule(model, family.default_objective(model, config), Optimization(optimizer), None)
        load_checkpoint(checkpoint, module, [optimizer])
        return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_checkpoints_reshard_between_tp2_and_tp1(run, runs: Path) -> None:
    common = ["data.batch_size=4", "checkpoint.every_n_steps=4", "plugins=[jt_dump_state]"]
    run("save-tp2", *common, "trainer.max_steps=4", "launcher.nproc=2", "parallel.tensor=2")
    checkpoint = runs / "save-tp2" / "checkpoints" / "step_00000004"
    loaded = _load_full(checkpoint)
    shards = [torch.load(runs / "save-tp2" / f"state-rank{r}.pt", weights_only=True)["params"] for r in range(2)]
    for name, value in loaded.items():
        dim, first = shards[0][name]
        gathered = first if dim is None else torch.cat([first, shards[1][name][1]], dim=dim)
        assert torch.equal(value, gathered), name

    # Next step after TP=2 -> TP=1, and after TP=1 -> TP=2, against continuing at the saved layout.
    continued_tp2 = run(
        "save-tp2", *common, "trainer.max_steps=5", "launcher.nproc=2", "parallel.tensor=2", "checkpoint.resume=auto"
    )
    as_tp1 = run("load-tp1", *common, "trainer.max_steps=5", f"checkpoint.resume={checkpoint}")
    assert abs(as_tp1[4] - continued_tp2[4]) <= 1e-6

    run("save-tp1", *common, "trainer.max_steps=4")
    checkpoint = runs / "save-tp1" / "checkpoints" / "step_00000004"
    continued_tp1 = run("save-tp1", *common, "trainer.max_steps=5", "checkpoint.resume=auto")
    as_tp2 = run(
        "load-tp2",
        *common,
        "trainer.max_steps=5",
        f"checkpoint.resume={checkpoint}",
        "launcher.nproc=2",
        "parallel.tensor=2",
    )
    assert abs(as_tp2[4] - continued_tp1[4]) <= 1e-6


def test_impossible_layouts_are_refused_at_config_time() -> None:
    manager = PluginManager.load(autoload=False)
    with pytest.raises(UsageError, match=r"parallel.tensor=3 must divide model.num_heads=4: .* among \[1, 2, 4\]"):
        compose_config(manager, [*TINY, "parallel.tensor=3", "launcher.nproc=3"])
    with pytest.raises(UsageError, match=r"parallel.tensor=2 .* does not divide the world of 1 process"):
        compose_config(manager, [*TINY, "parallel.tensor=2"])
    with pytest.raises(
        UsageError, match=r"Family 'llm' does not implement pipeline parallelism \(it implements: shard, tensor"
    ):
        compose_config(manager, [*TINY, "parallel.pipeline=2", "launcher.nproc=2"])
    with pytest.raises(UsageError, match=r"parallel.pipeline.* need CUDA"):
        distributed.check_parallel_sizes(ParallelConfig(pipeline=2), world_size=2, cuda=False)
    with pytest.raises(UsageError, match=r"parallel.sequence need CUDA"):
        distributed.check_parallel_sizes(ParallelConfig(tensor=2, sequence=True), world_size=2, cuda=False)


DIFFUSION = [
    "recipe=image_tiny",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.head_dim=8",
    "model.ffn_dim=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=8",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
]


def test_diffusion_transformer_at_tp2_equals_tp1(command, runs: Path) -> None:
    """The Wan transformer with Megatron layers swapped in: same forward and gradients, so the same
    training trajectory (noise, timesteps and condition dropout drawn alike on both TP ranks)."""
    losses = {}
    for tp in (1, 2):
        run_dir = runs / f"diffusion-tp{tp}"
        result = command(
            ["train", *DIFFUSION, f"launcher.nproc={tp}", f"parallel.tensor={tp}", f"run.dir={run_dir}"], cwd=runs
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with open(run_dir / "metrics.csv") as handle:
            losses[tp] = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}
    _close(losses[2], losses[1], 1e-5)


def test_diffusion_tensor_parallel_shards_heads_and_keeps_parameter_names() -> None:
    from jevons.recipes.diffusion.family import DiffusionFamily

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, [*DIFFUSION])
    with distributed.initialized(ParallelConfig()):
        names = [name for name, _ in DiffusionFamily().build_model(config).named_parameters()]
    assert "transformer.blocks.0.attn1.to_q.weight" in names and "transformer.blocks.1.ffn.net.2.weight" in names
    with pytest.raises(UsageError, match=r"parallel.tensor=3 must divide model.num_heads=4 and model.ffn_dim=32"):
        compose_config(manager, [*DIFFUSION, "parallel.tensor=3", "launcher.nproc=3"])
