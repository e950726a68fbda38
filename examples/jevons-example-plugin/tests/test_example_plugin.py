"""The plugin's own test: it acts on a real (tiny) Jevons run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jevons.framework.errors import UsageError
from jevons.framework.run import train

# Copied from tests/plugins/test_example_plugin_package.py (the tiny llm run with this plugin, one layer):
# the example package cannot import the project's tests.
TINY = [
    "recipe=llm_tiny",
    "plugins=[example]",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=3",
    "trainer.limit_val_batches=0",
    "trainer.progress_bar=false",
]


def test_sgd_is_used_and_every_step_is_logged(tmp_path: Path) -> None:
    result = train([*TINY, f"run.root={tmp_path}", "example.momentum=0.5"])
    assert result is not None  # None only for a run submitted elsewhere (Slurm)
    lines = [json.loads(line) for line in (result.run_dir / "example_losses.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {line["optimizer"] for line in lines} == {"SGD"}


def test_bad_momentum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="example.momentum=1.5 must be in"):
        train([*TINY, f"run.root={tmp_path}", "example.momentum=1.5"])
