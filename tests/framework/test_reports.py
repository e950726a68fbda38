"""``jevons compare`` and ``jevons plot`` on real tiny runs; the arithmetic they rest on, pinned."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from jevons.framework.reports import comparison_rows, first_reach, load_run

RUN = [
    "recipe=llm_tiny",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=6",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "generate.max_new_tokens=2",
    "trainer.progress_bar=false",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from jevons.framework.run import train

    root = tmp_path_factory.mktemp("runs")
    return [
        train([*RUN, f"plugins={p}", f"run.root={root / name}"], autoload=False).run_dir
        for name, p in (("adamw", "[]"), ("muon", "[muon]"))
    ]


def test_compare_prints_the_table_and_draws_both_runs(command, two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.png"
    result = command(["jevons", "compare", *map(str, two_runs), "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    summaries = [json.loads((run / "summary.json").read_text()) for run in two_runs]
    assert lines["plugins"].split()[1:] == ["none", "muon"]
    assert lines["val_loss"].split()[1:] == [f"{s['val_loss']:.4g}" for s in summaries]
    assert lines["muon.optimizer_steps"].split()[1:] == ["-", "6"]
    assert any(key.startswith("steps_to_val_loss<=") for key in lines)
    image = Image.open(out)
    assert image.size[0] > 1000 and image.size[1] > 400
    # Two panels of curves: many distinct colours, not a blank canvas.
    assert len(set(image.convert("RGB").getdata())) > 50


def test_plot_writes_the_curves_of_one_run(command, two_runs: list[Path], tmp_path: Path) -> None:
    result = command(["jevons", "plot", str(two_runs[1])], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()) == two_runs[1] / "curves.png"
    assert Image.open(two_runs[1] / "curves.png").size[0] > 500


def test_time_to_target_comes_from_the_validation_curve_and_the_training_clock(two_runs: list[Path]) -> None:
    run = load_run(two_runs[0])
    with open(two_runs[0] / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    val = [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]
    clock = [(int(r["step"]), float(r["time/train_s"])) for r in rows if r.get("time/train_s")]
    assert run.curves["val/loss"] == val and len(clock) == 6
    assert all(b[1] > a[1] for a, b in itertools.pairwise(clock))  # cumulative training time grows
    target = val[0][1]  # reached at the first evaluation, exactly
    _header, rows_out, used = comparison_rows([run], target)
    table = {row[0]: row[1] for row in rows_out}
    assert used == target and float(table[f"steps_to_val_loss<={target:.4g}"]) == val[0][0]
    assert float(table[f"train_s_to_val_loss<={target:.4g}"]) == pytest.approx(dict(clock)[val[0][0]], rel=1e-3)


def test_first_reach_interpolates_between_evaluations() -> None:
    curve = [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert first_reach(curve, 2.5) == 15.0
    assert first_reach(curve, 3.5) == 10
    assert first_reach(curve, 0.5) is None


def test_an_unfinished_run_is_a_clear_error(tmp_path: Path) -> None:
    from jevons.framework.errors import UsageError

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UsageError, match="no summary.json .*did not finish; resume it"):
        load_run(tmp_path)
