"""FSDP2 sharded data parallelism (``parallel.shard``) on CPU with gloo: real `train launcher.nproc=N` runs.

Losses come from each run's metrics.csv; the jt_dump_state test plugin saves every rank's pieces
of the parameters and optimizer state, and the bytes it holds, at the end of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.framework.sharding import local_tensor

LLM = [
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
# Per-rank batch sizes giving one global batch of 8 at every layout.
ONE, SHARD2, SHARD4 = (
    ["data.batch_size=8"],
    ["data.batch_size=4", "launcher.nproc=2", "parallel.shard=2"],
    ["data.batch_size=2", "launcher.nproc=4", "parallel.shard=4"],
)


@pytest.fixture(scope="module")
def runs(gloo_runs) -> Path:
    return gloo_runs.root


@pytest.fixture(scope="module")
def run(gloo_runs):
    """``run(name, *overrides, base=LLM)``: a run into ``runs/name`` (``gloo_runs``); its losses by step."""

    def call(name: str, *overrides: str, base: list[str] = LLM, crashes: bool = False) -> dict[int, float]:
        return gloo_runs(name, [*base, *overrides], crashes=crashes)

    return call


def _close(a: dict[int, float], b: dict[int, float], tolerance: float) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tolerance, f"largest per-step loss difference {worst:.3g} > {tolerance}"


def _dumps(runs: Path, name: str, ranks: int) -> list[dict]:
    return [torch.load(runs / name / f"state-rank{r}.pt", weights_only=True) for r in range(ranks)]


STEPS_20 = ["trainer.max_steps=20", "checkpoint.every_n_steps=20", "plugins=[jt_dump_state]"]
# The sharded references checkpoint every 4 steps: the resume and resharding tests start from them.
SHARDED_20 = [
    "trainer.max_steps=20",
    "checkpoint.every_n_steps=4",
    "checkpoint.keep_last=5",
    "plugins=[jt_dump_state]",
]


HSDP = ["data.batch_size=2", "launcher.nproc=4", "parallel.shard=2", "parallel.replicate=2"]
# The one-process and HSDP references also keep an EMA (it changes nothing in training).
EMA = ["plugins=[jt_dump_state,ema]", "ema.decay=0.8"]


@pytest.fixture(scope="module")
def llm_layouts(run) -> dict[str, dict[int, float]]:
    """The llm at one process and three data-parallel layouts, 20 steps each; HSDP also recomputes
    its blocks in backward (checkpointing inside the sharded block: the rerun gathers the weights again)."""
    return {
        "one": run("one", *STEPS_20, *EMA, *ONE),
        "shard2": run("shard2", *SHARDED_20, *SHARD2),
        "shard4": run("shard4", *SHARDED_20, *SHARD4),
        "hsdp": run("hsdp", *STEPS_20, *EMA, *HSDP, "trainer.activation_checkpointing=full"),
    }


def _whole(pieces: list[dict[str, torch.Tensor]], name: str, shard: int, tensor: int, dim: int | None) -> torch.Tensor:
    """One tensor from every rank's piece: FSDP's cut (dim 0) inside each TP rank's, ranks ordered
    ``(shard, tensor)`` with tensor innermost (one replica)."""
    per_tp = [torch.cat([pieces[s * tensor + t][name] for s in range(shard)]) for t in range(tensor)]
    return per_tp[0] if dim is None else torch.cat(per_tp, dim=dim)


def test_shard2_shard4_and_hsdp_equal_one_process_for_20_steps(llm_layouts) -> None:
    _close(llm_layouts["shard2"], llm_layouts["one"], 1e-5)
    _close(llm_layouts["shard4"], llm_layouts["one"], 1e-5)
    _close(llm_layouts["hsdp"], llm_layouts["one"], 1e-5)  # 2 replicas of 2 shards


def test_activation_checkpointing_under_hsdp_equals_one_process(llm_layouts, runs: Path) -> None:
    """torchtitan's order, checkpointing inside the sharded block (the HSDP reference runs with it)."""
    assert "activation_checkpointing: full" in (runs / "hsdp" / "config.yaml").read_text()
    _close(llm_layouts["hsdp"], llm_layouts["one"], 1e-5)


def test_gradients_under_shard4_and_hsdp_are_one_process_gradients(llm_layouts, runs: Path) -> None:
    """The gradients themselves, not only the losses (AdamW barely sees a wrong constant scale)."""
    single = _dumps(runs, "one", 1)[0]["grads"]
    for name, ranks, shard in (("shard4", 4, 4), ("hsdp", 4, 2)):
        grads = [dump["grads"] for dump in _dumps(runs, name, ranks)]
        assert grads[0].keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(_whole(grads, key, shard, 1, None), value, rtol=1e-4, atol=1e-6)


def test_each_rank_holds_a_quarter_of_the_training_state_at_shard4(llm_layouts, runs: Path) -> None:
    """Parameters, gradients and AdamW's two moments: every tensor is split, norms and embeddings
    included, so each rank holds 1/4 of one process's bytes and the four together hold it once."""
    single = _dumps(runs, "one", 1)[0]["bytes"]
    ranks = [dump["bytes"] for dump in _dumps(runs, "shard4", 4)]
    assert single["params"] > 0 and single["grads"] == single["params"] and single["optimizer"] == 2 * single["params"]
    for kind in ("params", "grads", "optimizer"):
        assert sum(rank[kind] for rank in ranks) == single[kind], kind  # nothing replicated
        for rank in ranks:
            assert abs(rank[kind] / single[kind] - 1 / 4) <= 0.05 / 4, (kind, rank[kind], single[kind])
    # The trained weights themselves: rank pieces, concatenated along dim 0, are one process's.
    whole = _dumps(runs, "one", 1)[0]["params"]
    pieces = [{name: value for name, (_, value) in dump["params"].items()} for dump in _dumps(runs, "shard4", 4)]
    for name, (_, value) in whole.items():
        torch.testing.assert_close(_whole(pieces, name, 4, 1, None), value, atol=1e-5, rtol=0)
    # HSDP: each rank holds half (one of 2 shards), the two replicas the same halves.
    hsdp = [dump["bytes"] for dump in _dumps(runs, "hsdp", 4)]
    assert all(rank["params"] * 2 == single["params"] for rank in hsdp)


def _saved_average(run_dir: Path, rank: int) -> dict[str, torch.Tensor]:
    import torch.distributed.tensor  # a sharded run's average is saved as its DTensor pieces

    state = torch.load(run_dir / "checkpoints" / "step_00000020" / f"state-rank{rank:05d}.pt", weights_only=True)
    (ema,) = [value for key, value in state["callbacks"].items() if "ExponentialMovingAverage" in key]
    return {name: local_tensor(value) for name, value in ema["average"].items()}


def test_ema_under_hsdp_averages_each_shard_as_one_process_averages_the_whole(llm_layouts, runs: Path) -> None:
    single = _saved_average(runs / "one", 0)
    ranks = [_saved_average(runs / "hsdp", rank) for rank in range(4)]  # (replica, shard): 2 x 2
    assert all(rank.keys() == single.keys() for rank in ranks) and single
    for name, value in single.items():
        first, second = (torch.cat([ranks[2 * replica + s][name] for s in range(2)]) for replica in range(2))
        torch.testing.assert_close(first, value, atol=1e-5, rtol=0)  # as the weights themselves
        assert torch.equal(first, second), name  # the replicas keep the same average
        assert not torch.equal(value, _dumps(runs, "one", 1)[0]["params"][name][1])  # an average, not the weights


MUON_20 = [
    "trainer.max_steps=20",
    "checkpoint.every_n_steps=20",
    "plugins=[muon,jt_dump_state]",
    "muon.ns_dtype=float32",
]
TP2_SHARD2 = ["data.batch_size=4", "launcher.nproc=4", "parallel.tensor=2", "parallel.shard=2"]


@pytest.fixture(scope="module")
def muon_layouts(run) -> dict[str, dict[int, float]]:
    """Muon (AdamW for embeddings and norms) in one process and at TP=2 x shard=2: one 4-process run
    checks both the 2-D layout and Newton-Schulz on matrices cut twice."""
    return {"one": run("muon-one", *MUON_20, *ONE), "tp2-shard2": run("tp2-shard2", *MUON_20, *TP2_SHARD2)}


def test_tp2_by_shard2_on_four_processes_equals_one_process(
    muon_layouts, runs: Path, plugin_site: Path, monkeypatch
) -> None:
    _close(muon_layouts["tp2-shard2"], muon_layouts["one"], 1e-5)
    # Its checkpoint, where both cuts are on dimension 0 of column-parallel weights, read in one process.
    from jevons.framework.inference import load_run

    monkeypatch.syspath_prepend(str(plugin_site))
    with distributed.initialized(ParallelConfig()):
        loaded = dict(load_run(runs / "tp2-shard2").model.named_parameters())
    dumps = _dumps(runs, "tp2-shard2", 4)
    pieces = [{name: value for name, (_, value) in dump["params"].items()} for dump in dumps]
    assert loaded.keys() == pieces[0].keys()
    for name, value in loaded.items():
        dim = dumps[0]["params"][name][0]
        assert torch.equal(value.detach(), _whole(pieces, name, 2, 2, dim)), name


def test_muon_under_tp2_by_shard2_equals_one_process(muon_layouts, runs: Path) -> None:
    """Newton-Schulz on whole matrices: each update is gathered over the shards (and TP ranks) before it
    is orthogonalised; orthogonalising pieces would be another update and move these weights elsewhere.
    (Its losses are checked above; embeddings and norms stay on AdamW, so AdamW is checked at TP x shard too.)"""
    whole = _dumps(runs, "muon-one", 1)[0]["params"]
    dumps = _dumps(runs, "tp2-shard2", 4)
    pieces = [{name: value for name, (_, value) in dump["params"].items()} for dump in dumps]
    for name, (_, value) in whole.items():
        # 20 steps of fp32 Newton-Schulz on other cuts: rounding grows to ~1e-5; orthogonalising pieces
        # instead moves each weight by O(lr) = 1e-3 a step.
        torch.testing.assert_close(_whole(pieces, name, 2, 2, dumps[0]["params"][name][0]), value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_under_shard2_follows_one_process_at_fp32(llm_layouts, run, runs: Path, precision: str) -> None:
    """FSDP's MixedPrecisionPolicy (bf16 gathers, fp32 reduction) at bf16-mixed keeps fp32 master
    weights and moments; bf16-true shards bf16 ones. Losses within tests/framework/test_precision.py's
    tolerances of one fp32 process's."""
    sharded = run(f"{precision}-shard2", *STEPS_20, f"trainer.precision={precision}", *SHARD2)
    single = llm_layouts["one"]
    worst = max(abs(sharded[k] - single[k]) / single[k] for k in single)
    assert sharded.keys() == single.keys() and 0 < worst <= {"bf16-mixed": 3e-3, "bf16-true": 5e-2}[precision], worst
    dtype = torch.float32 if precision == "bf16-mixed" else torch.bfloat16
    for dump in _dumps(runs, f"{precision}-shard2", 2):
        assert {value.dtype for _, value in dump["params"].values()} == {dtype}
        assert {v.dtype for state in dump["optimizer"].values() for v in state.values() if v.ndim} == {dtype}


def test_nan_on_one_rank_under_shard2_skips_the_step_on_both(run, runs: Path) -> None:
    """The poisoned rank's NaN reaches every rank's gradient pieces through the reduce-scatter; the
    verdict is shared, so both skip the same updates and no rank hangs."""
    run("nan-shard2", "trainer.max_steps=6", "plugins=[jt_nan_at]", "jt_nan_at.steps=[3]", "jt_nan_at.rank=1", *SHARD2)
    ranks = [json.loads((runs / "nan-shard2" / f"nan-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2]
    for rank in ranks:
        assert [record["step"] for record in rank["steps"] if record["unchanged"]] == [3]


def test_diffusion_at_shard2_equals_ddp(run, tiny_diffusion_20: list[str]) -> None:
    """The diffusion objective draws its noise per data-parallel rank, so two ranks do not draw one
    process's noise; at the same two ranks, sharding changes nothing but where the state lives.
    (The DDP reference is the Ulysses tests' too.)"""
    _close(
        run("diffusion-shard2", "launcher.nproc=2", "parallel.shard=2", base=tiny_diffusion_20),
        run("diffusion-ddp2", "launcher.nproc=2", base=tiny_diffusion_20),
        1e-5,
    )


def test_speech_at_shard2_equals_ddp(run, smoke, speech_corpus: Path) -> None:
    """Every family shards. Speech, with its validation (greedy and CTC decoding with sharded weights),
    against DDP at 2 ranks."""
    base = [*smoke["speech"], "trainer.max_steps=6", "trainer.log_every_n_steps=1", "launcher.nproc=2"]
    base.append(f"data.source={speech_corpus}")
    _close(run("speech-shard2", "parallel.shard=2", base=base), run("speech-ddp2", base=base), 1e-5)


def test_mixed_modal_at_shard2_equals_one_process(run, smoke) -> None:
    """mixed_modal draws no per-rank noise, so shard=2 equals one process at the same global batch
    (its image generation, costing most of a minute on 2 cores, is left out)."""
    base = [*smoke["mixed_modal"], "trainer.max_steps=6", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0"]
    sharded = run("mixed_modal-shard2", "launcher.nproc=2", "parallel.shard=2", base=base)
    _close(sharded, run("mixed_modal-one", "data.batch_size=8", base=base), 1e-5)


def test_checkpoints_saved_at_shard4_load_at_shard2_tp2_and_in_one_process(
    llm_layouts, run, command, runs: Path, plugin_site: Path, monkeypatch
) -> None:
    pieces = [dump["params"] for dump in _dumps(runs, "shard4", 4)]  # each rank's, at the last step (20)
    # The last checkpoint's tensors, loaded in one process, are the shard-4 run's pieces put together.
    from jevons.framework.inference import load_run

    monkeypatch.syspath_prepend(str(plugin_site))  # the run's jt_dump_state plugin, found as an entry point
    with distributed.initialized(ParallelConfig()):
        loaded = dict(load_run(runs / "shard4").model.named_parameters())
    assert loaded.keys() == pieces[0].keys()
    for name, value in loaded.items():
        assert torch.equal(value.detach(), torch.cat([p[name][1] for p in pieces])), name
    # jevons export from the sharded run: one process reads every rank's pieces.
    from safetensors.torch import load_file

    exported = command(
        ["jevons", "export", f"run_dir={runs / 'shard4'}", f"out={runs / 'export-shard4'}"],
        cwd=runs,
        PYTHONPATH=str(plugin_site),
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    weights = load_file(str(runs / "export-shard4" / "model.safetensors"))
    embedding = weights["model.embed_tokens.weight"]  # the vocabulary, without TP's padding rows
    assert torch.equal(embedding, loaded["embed.weight"].detach()[: embedding.shape[0]])
    # The step after step 4's checkpoint at three other layouts, against the shard-4 run's own.
    checkpoint = runs / "shard4" / "checkpoints" / "step_00000004"  # kept: keep_last=5 of every 4 in 20
    assert checkpoint.is_dir()
    layouts = {
        "load-shard2": SHARD2,
        "load-one": ONE,
        "load-tp2": ["data.batch_size=8", "launcher.nproc=2", "parallel.tensor=2"],
    }
    continued = llm_layouts["shard4"]
    for name, layout in layouts.items():
        resumed = run(name, *SHARDED_20, "trainer.max_steps=5", *layout, f"checkpoint.resume={checkpoint}")
        assert abs(resumed[4] - continued[4]) <= 1e-6, (name, resumed[4], continued[4])


def test_sigkill_and_resume_under_shard2_is_bitwise(llm_layouts, run, runs: Path) -> None:
    """Rank 1 killed at step 7 of the shard=2 reference's settings; resumed from step 4, every step
    equals the reference run's bitwise."""
    killed = [*SHARDED_20, *SHARD2]
    crash = ["plugins=[jt_dump_state,jt_crash_at]", "jt_crash_at.step=7", "jt_crash_at.rank=1"]
    run("killed-shard2", *killed, *crash, crashes=True)
    resumed = run("killed-shard2", *killed, "checkpoint.resume=auto")
    assert resumed == llm_layouts["shard2"] and len(resumed) == 20
    assert json.loads((runs / "killed-shard2" / "summary.json").read_text())["resumed_from_step"] == 4


PRETRAINED = [
    "recipe=llama_sft_tiny",  # the built-in tiny Llama folder, read as a released checkpoint is
    "data.seq_len=128",
    "data.num_workers=0",
    "trainer.max_steps=6",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
    "checkpoint.every_n_steps=6",
    "plugins=[lora,jt_dump_state]",
    "lora.rank=4",
]


def test_a_pretrained_model_loads_into_its_shards_and_fine_tunes_as_one_process(run, runs: Path) -> None:
    """Under parallel.shard the folder is read after fully_shard, each rank filling only its rows, and
    LoRA's adapters are made on the still-unloaded base: the run equals one process's, and every rank's
    pieces of the frozen base are its rows of one process's loaded tensors."""
    single = run("pretrained-one", *PRETRAINED, "data.batch_size=4", base=[])
    sharded = run(
        "pretrained-shard2", *PRETRAINED, "data.batch_size=2", "launcher.nproc=2", "parallel.shard=2", base=[]
    )
    _close(sharded, single, 1e-5)
    whole = _dumps(runs, "pretrained-one", 1)[0]["params"]
    pieces = [
        {name: value for name, (_, value) in dump["params"].items()} for dump in _dumps(runs, "pretrained-shard2", 2)
    ]
    frozen = [name for name in whole if "lora_" not in name]
    assert frozen and len(frozen) < len(whole)
    for name in whole:
        atol = 0 if name in frozen else 1e-5  # the base exactly as loaded; the adapters as trained
        torch.testing.assert_close(_whole(pieces, name, 2, 1, None), whole[name][1], atol=atol, rtol=0)


def test_impossible_shardings_are_refused_at_config_time() -> None:
    manager = PluginManager.load(autoload=False)
    refusals = {
        r"parallel.replicate=1 x shard=3 = 3 does not equal the 4 data-parallel rank\(s\)": [
            *LLM,
            "parallel.shard=3",
            "launcher.nproc=4",
        ],
        r"replicate=2 x shard=2 = 4 does not equal the 2 data-parallel rank\(s\): 4 process\(es\) / \(tensor=2": [
            *LLM,
            "parallel.shard=2",
            "parallel.replicate=2",
            "parallel.tensor=2",
            "launcher.nproc=4",
        ],
        r"parallel.replicate=2 without parallel.shard": [*LLM, "parallel.replicate=2", "launcher.nproc=4"],
        r"trainer.compile=true with parallel.shard=2": [
            *LLM,
            "parallel.shard=2",
            "launcher.nproc=2",
            "trainer.compile=true",
        ],
        r"step_distillation with parallel.shard=2": [
            "recipe=image_tiny",
            "plugins=[step_distillation]",
            "parallel.shard=2",
            "launcher.nproc=2",
        ],
        r"lowres_cascade with parallel.shard=2": ["recipe=image_lowdiff_tiny", "parallel.shard=2", "launcher.nproc=2"],
    }
    for message, overrides in refusals.items():
        with pytest.raises(UsageError, match=message):
            compose_config(manager, overrides)
    config = compose_config(manager, [*LLM, "parallel.shard=2", "launcher.nproc=8"])
    assert (config.parallel.shard, config.parallel.replicate) == (2, None)  # HSDP: 4 replicas of 2 shards
