"""The ema plugin: the average is the hand-computed one, validation runs on it, and a resume continues it."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from jevons.framework.checkpoint_dirs import latest_checkpoint
from jevons.framework.plugin import hookimpl

COMMON = ["trainer.max_steps=10", "optimizer.warmup_steps=0", "optimizer.lr=1e-2", "trainer.log_every_n_steps=1"]


class _Recorder(pl.Callback):
    """The trained parameters after every optimizer step (and before the first)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def _record(self, pl_module: pl.LightningModule) -> None:
        model = pl_module.model  # type: ignore[attr-defined]  # JevonsModule
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._record(pl_module)


def _recorder() -> tuple[tuple[str, Any], _Recorder]:
    recorder = _Recorder()

    class Plugin:
        @hookimpl
        def register_callbacks(self, register: Callable[[pl.Callback], None], config: Any) -> None:
            register(recorder)

    return ("recorder", Plugin()), recorder


def _saved_average(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(latest_checkpoint(run_dir / "checkpoints") / "state-rank00000.pt", weights_only=True)
    (ema,) = [v for k, v in state["callbacks"].items() if "ExponentialMovingAverage" in k]
    return ema["average"]


@pytest.mark.parametrize("warmup", [False, True])
def test_the_average_is_the_hand_computed_one_over_ten_steps(train, tiny, tmp_path: Path, warmup: bool) -> None:
    plugin, recorder = _recorder()
    result = train(
        tiny(*COMMON, "plugins=[ema,recorder]", "ema.decay=0.8", f"ema.warmup={warmup}", "trainer.limit_val_batches=0"),
        plugins=[plugin],
    )
    expected = {n: w.clone() for n, w in recorder.weights[0].items()}
    for n, weights in enumerate(recorder.weights[1:]):
        decay = min(0.8, (1 + n) / (10 + n)) if warmup else 0.8
        for name in expected:
            expected[name] = decay * expected[name] + (1 - decay) * weights[name]
    average = _saved_average(result.run_dir)
    assert average.keys() == expected.keys() and len(recorder.weights) == 11
    for name in expected:
        torch.testing.assert_close(average[name], expected[name], atol=1e-6, rtol=1e-5)
        assert not torch.equal(average[name], recorder.weights[-1][name])  # an average, not the last weights
    assert result.summary["plugin_figures"]["ema"]["updates"] == 10


def _val_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(handle) if r.get("val/loss")}


def test_validation_runs_on_the_average(train, tiny, tmp_path: Path) -> None:
    """With decay 1 the average stays the initial weights: every validation sees the same model."""
    validated = [*COMMON, "trainer.val_check_interval=5", "trainer.limit_val_batches=2", "plugins=[ema]"]
    frozen = _val_losses(train(tiny(*validated, "ema.decay=1.0", "ema.warmup=false")).run_dir)
    trained = _val_losses(train(tiny(*validated, "ema.decay=1.0", "ema.warmup=false", "ema.validate=false")).run_dir)
    assert frozen[4] == frozen[9]  # the same weights on the same batches, although training moved on
    assert trained[9] < trained[4] < frozen[4]  # the trained weights, validated as they are


def test_an_ema_run_resumes_exactly(train, tiny, crasher, tmp_path: Path) -> None:
    common = tiny(*COMMON, "checkpoint.every_n_steps=4", "trainer.val_check_interval=5", "trainer.limit_val_batches=1")
    straight = train([*common, "plugins=[ema]", f"run.dir={tmp_path / 'straight'}"])
    with pytest.raises(RuntimeError, match="injected crash at step 6"):
        train([*common, "plugins=[ema,crasher]", f"run.dir={tmp_path / 'resumed'}"], plugins=[crasher(6)])
    resumed = train([*common, "plugins=[ema]", f"run.dir={tmp_path / 'resumed'}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 4
    assert _val_losses(resumed.run_dir) == _val_losses(straight.run_dir)
    ours, theirs = _saved_average(resumed.run_dir), _saved_average(straight.run_dir)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_export_and_sampling_from_the_average(train, tiny, tmp_path: Path, capsys) -> None:
    """``jevons export ... ema=true`` writes the moving average, not the trained weights."""
    from safetensors.torch import load_file

    from jevons.framework.cli.jevons import main

    run = train(tiny(*COMMON, "plugins=[ema]", "ema.decay=0.5", "checkpoint.every_n_steps=10")).run_dir
    assert main(["export", f"run_dir={run}", f"out={tmp_path / 'trained'}"]) == 0
    assert main(["export", f"run_dir={run}", f"out={tmp_path / 'average'}", "ema=true"]) == 0
    assert "ema=true: " in capsys.readouterr().out
    trained, averaged = (load_file(tmp_path / n / "model.safetensors") for n in ("trained", "average"))
    average = _saved_average(run)
    for hf_name, ours in (("model.layers.0.self_attn.q_proj.weight", "layers.0.attn.q.weight"),):
        torch.testing.assert_close(averaged[hf_name].float(), average[ours].float(), atol=1e-2, rtol=0)
        assert (trained[hf_name].float() - averaged[hf_name].float()).abs().max() > 1e-3
    assert main(["sample", f"run_dir={run}", f"out={tmp_path / 'samples'}", "ema=true", "max_new_tokens=2"]) == 0
    plain = train(tiny(*COMMON, "checkpoint.every_n_steps=10", f"run.dir={tmp_path / 'plain'}")).run_dir
    assert main(["export", f"run_dir={plain}", f"out={tmp_path / 'x'}", "ema=true"]) != 0
    assert "trained without plugins=[ema]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
