"""A real tiny run end to end: what the run directory holds, and resuming from its checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")}


def test_run_directory_holds_config_versions_metrics_checkpoints_samples_and_summary(train, tiny) -> None:
    result = train(tiny("trainer.max_steps=4", "seed=3"))
    run_dir = result.run_dir
    assert run_dir.parent.name == "llm_tiny"
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "versions.json",
        "metrics.csv",
        "tensorboard",
        "checkpoints",
        "samples",
        "summary.json",
    } <= names

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["recipe"] == "llm_tiny" and config["seed"] == 3 and config["trainer"]["max_steps"] == 4
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(
        torch.__version__.split("+")[0]
    )
    assert {"jevons.recipes.llm", "jevons.kernels"} <= set(versions["plugins"])
    assert list(_losses(run_dir)) == [0, 1, 2, 3]  # every step logged, Lightning's 0-based step
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_00000002", "step_00000004"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000002.txt", "step_00000004.txt"]
    assert (run_dir / "samples" / "step_00000004.txt").read_text().startswith('The "assert" statement')

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == result.summary
    assert summary["steps"] == 4 and summary["resumed_from_step"] is None
    assert summary["train_loss"] == _losses(run_dir)[3]
    assert 0 < summary["val_loss"] < 7 and summary["tokens_per_s"] > 0
    assert summary["metrics"]["val/perplexity"] > 1
    assert summary["artifacts"]["checkpoint"].endswith("step_00000004")


def test_resume_auto_continues_the_step_count_in_the_same_run(train, tiny) -> None:
    first = train(tiny("trainer.max_steps=4"))
    second = train(tiny("trainer.max_steps=6", "checkpoint.resume=auto"))
    assert second.run_dir == first.run_dir
    assert second.summary["resumed_from_step"] == 4 and second.summary["steps"] == 6
    assert list(_losses(second.run_dir)) == [0, 1, 2, 3, 4, 5]  # no step logged twice


def test_resumed_losses_equal_the_uninterrupted_run(train, tiny, crasher, tmp_path: Path) -> None:
    # Warm-up off so the schedule moves at every step; a worker process decodes the data.
    common = tiny("trainer.max_steps=8", "checkpoint.every_n_steps=3", "optimizer.warmup_steps=0", "data.num_workers=1")
    straight = train([*common, f"run.dir={tmp_path / 'straight'}"])
    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="injected crash at step 5"):
        train([*common, f"run.dir={interrupted}", "plugins=[crasher]"], plugins=[crasher(5)])
    resumed = train([*common, f"run.dir={interrupted}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 3
    assert _losses(interrupted) == _losses(straight.run_dir)  # exact, not approximately
    assert len(_losses(straight.run_dir)) == 8
