"""What a run records of its kernels and its machine: the dispatch choices (summary, versions.json, the
run directory's kernels.json, reused on resume) and its model FLOPs utilisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jevons.framework.data.cache import data_root


def test_a_run_reports_its_mfu_and_the_kernels_it_chose(train, tiny) -> None:
    result = train(tiny("plugins=[muon]", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    summary = result.summary
    assert 0 < summary["mfu"] < 1 and summary["peak_matmul_tflops"] > 0
    chosen = summary["kernels"]
    assert chosen and all(key.startswith("newton_schulz|infer|") for key in chosen)
    assert all(value.split(" ")[0] in ("reference:float32", "reference:bfloat16") for value in chosen.values())
    versions = json.loads((result.run_dir / "versions.json").read_text())
    assert versions["kernels"] == chosen
    record = json.loads((result.run_dir / "kernels.json").read_text())
    assert sorted(record["choices"]) == sorted(chosen)


def test_a_resumed_run_computes_with_the_kernels_the_first_part_chose(train, tiny, crasher, tmp_path: Path) -> None:
    common = tiny("plugins=[muon,crasher]", "trainer.max_steps=4", "checkpoint.every_n_steps=2", f"run.dir={tmp_path}")
    with pytest.raises(RuntimeError, match="injected crash at step 3"):
        train(common, plugins=[crasher(3)])
    first = json.loads((tmp_path / "kernels.json").read_text())["choices"]
    # The machine's cache now says otherwise (another day, another load): the resume must not follow it.
    cache_path = data_root() / "kernels.json"
    cache = json.loads(cache_path.read_text())
    flipped = {"reference:float32": "reference:bfloat16", "reference:bfloat16": "reference:float32"}
    for entries in cache["devices"].values():
        for key, entry in entries.items():
            if key in first:
                entry["choice"] = flipped[first[key]["choice"]]
    cache_path.write_text(json.dumps(cache))
    resumed = train([*common, "checkpoint.resume=auto"], plugins=[crasher(99)])
    assert resumed.summary["resumed_from_step"] == 2
    assert resumed.summary["kernels"] == {key: f"{value['choice']} (resumed)" for key, value in first.items()}
