"""The example third-party package, installed for real, changes a real run through its entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "jevons-example-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    return target


def test_installed_example_plugin_acts_on_a_run(command, site: Path, tmp_path: Path) -> None:
    # The one-layer tiny llm run of tests/framework/test_reports.py (RUN) with the example, written out as the
    # command line a user of the installed package types; the example's own test copies it.
    args = [
        "train",
        "recipe=llm_tiny",
        "plugins=[example]",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.max_seq_len=32",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "generate.max_new_tokens=2",
        f"run.root={tmp_path}",
    ]
    result = command(args, cwd=tmp_path, PYTHONPATH=str(site))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "llm_tiny").iterdir())
    lines = [json.loads(line) for line in (run_dir / "example_losses.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # the callback saw every step
    assert {line["optimizer"] for line in lines} == {"SGD"}  # its optimizer replaced AdamW
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["plugins"]["example"] == "0.1.0"


def test_the_example_packages_own_tests_pass(command, site: Path, tmp_path: Path) -> None:
    result = command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=tmp_path,
        PYTHONPATH=str(site),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
