"""Real `train` processes killed, poisoned and restarted (test plugins from tests/plugins_for_tests)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

TINY = [
    "recipe=llm_tiny",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.max_seq_len=128",
    "data.seq_len=32",
    "data.batch_size=4",
    "trainer.val_check_interval=25",
    "trainer.limit_val_batches=1",
    "generate.max_new_tokens=2",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
]


@pytest.fixture
def train_cmd(command, plugin_site: Path, tmp_path: Path):
    """``train_cmd(run_dir, *overrides)``: the real `train` command; returns the finished process."""

    def call(run_dir: Path, *overrides: str, base: list[str] = TINY):
        return command(["train", *base, *overrides, f"run.dir={run_dir}"], cwd=tmp_path, PYTHONPATH=str(plugin_site))

    return call


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def test_sigkill_at_three_steps_then_the_same_command_continues_exactly(train_cmd, tmp_path: Path) -> None:
    common = ["trainer.max_steps=90", "checkpoint.every_n_steps=10", "data.num_workers=1", "plugins=[jt_dump_state]"]
    straight = tmp_path / "straight"
    assert train_cmd(straight, *common).returncode == 0
    killed = tmp_path / "killed"
    for step in (7, 23, 38):  # the first before any checkpoint: the restart starts over, as it must
        crashed = train_cmd(
            killed, *common, "checkpoint.resume=auto", "plugins=[jt_dump_state,jt_crash_at]", f"jt_crash_at.step={step}"
        )
        assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL: no handler ran
    finished = train_cmd(killed, *common, "checkpoint.resume=auto")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming from" in finished.stdout and "step_00000030" in finished.stdout

    expected, got = _losses(straight), _losses(killed)
    assert len(expected) == 90 and got == expected  # bitwise: 50+ steps after the last kill included
    final = [torch.load(d / "state-rank0.pt", weights_only=True) for d in (straight, killed)]
    for name, (_, value) in final[0]["params"].items():
        assert torch.equal(value, final[1]["params"][name][1]), name
    for index, state in final[0]["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, final[1]["optimizer"][index][key]), (index, key)


def test_nan_on_one_rank_skips_the_same_steps_on_both(train_cmd, tmp_path: Path) -> None:
    run_dir = tmp_path / "nan"
    result = train_cmd(
        run_dir,
        "trainer.max_steps=10",
        "launcher.nproc=2",
        "data.num_workers=0",
        "plugins=[jt_nan_at]",
        "jt_nan_at.steps=[3,7]",
        "jt_nan_at.rank=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run_dir / f"nan-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2, 6]  # global_step before the 3rd and 7th updates
    for rank in ranks:
        unchanged = [record["step"] for record in rank["steps"] if record["unchanged"]]
        assert unchanged == [3, 7]  # the weights did not move at exactly those steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nonfinite_skipped"] == 2 and summary["steps"] == 10


def test_nan_with_stop_policy_exits_naming_the_step(train_cmd, tmp_path: Path) -> None:
    result = train_cmd(
        tmp_path / "stop",
        "trainer.max_steps=10",
        "launcher.nproc=2",
        "data.num_workers=0",
        "trainer.nonfinite=stop",
        "plugins=[jt_nan_at]",
        "jt_nan_at.steps=[4]",
    )
    assert result.returncode != 0
    assert "non-finite loss or gradient at step 3 (trainer.nonfinite=stop)" in result.stderr
    assert "Traceback" not in result.stderr.split("non-finite loss")[-1]


def _train_windows(seq_len: int) -> int:
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.recipes.llm.family import LLMFamily

    config = compose_config(PluginManager.load(autoload=False), [*TINY, f"data.seq_len={seq_len}"])
    return len(LLMFamily().build_dataset(config, "train"))


def test_two_ranks_two_workers_resume_mid_epoch_without_duplicates_or_gaps(train_cmd, tmp_path: Path) -> None:
    from jevons.framework.data.sampler import RandomBatchSampler

    windows = _train_windows(128)
    epoch = RandomBatchSampler(windows, 8, seed=0, world_size=2)
    steps = len(epoch)  # global batches of 16 in one epoch
    run_dir = tmp_path / "epoch"
    common = [
        "data.seq_len=128",
        "data.batch_size=8",
        "data.num_workers=2",
        "launcher.nproc=2",
        "seed=0",
        f"trainer.max_steps={steps}",
        "checkpoint.every_n_steps=20",
        "trainer.limit_val_batches=0",
    ]
    crashed = train_cmd(
        run_dir,
        *common,
        "plugins=[jt_record_batches,jt_crash_at]",
        f"jt_crash_at.step={steps // 2 + 3}",
        "jt_crash_at.rank=1",
    )
    assert crashed.returncode != 0
    resumed = train_cmd(run_dir, *common, "plugins=[jt_record_batches]", "checkpoint.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    consumed: list[int] = []
    for rank in range(2):
        by_step: dict[int, list[int]] = {}
        for line in (run_dir / f"batches-rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            by_step[record["step"]] = record["indices"]  # steps redone after the crash: the resumed run's batches
        assert sorted(by_step) == list(range(1, steps + 1))
        consumed += [i for step in sorted(by_step) for i in by_step[step]]
    assert len(set(consumed)) == len(consumed) == steps * 16  # 0 duplicated
    assert set(consumed) == set(epoch.order(0)[: steps * 16].tolist())  # 0 missing: the whole epoch, once


def test_a_diffusion_run_killed_and_resumed_matches_exactly(train_cmd, tmp_path: Path) -> None:
    """Noise, timesteps and condition dropout come from the restored RNG streams: bitwise equal losses."""
    diffusion = [
        "recipe=image_tiny",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=32",
        "data.batch_size=4",
        "data.num_workers=1",
        "trainer.max_steps=16",
        "checkpoint.every_n_steps=5",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_cmd(straight, base=diffusion).returncode == 0
    crashed = train_cmd(killed, "checkpoint.resume=auto", "plugins=[jt_crash_at]", "jt_crash_at.step=8", base=diffusion)
    assert crashed.returncode == -9
    finished = train_cmd(killed, "checkpoint.resume=auto", base=diffusion)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) == 16
