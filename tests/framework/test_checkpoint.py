"""The checkpoint format: exact round trip, only complete checkpoints visible, nothing unpickled unsafely."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from jevons.framework import checkpoint as ckpt
from jevons.framework import checkpoint_dirs
from jevons.framework.errors import UsageError


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> float:
    torch.manual_seed(100 + seed)
    loss = model(torch.randn(4, 6)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _save(root: Path, step: int, model, optimizer, keep_last: int = 3) -> Path:
    return ckpt.save_checkpoint(
        root, step, model, [optimizer], {"global_step": step, "note": "x"}, "seed: 0\n", keep_last
    )


def test_round_trip_restores_model_optimizer_and_the_next_update(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    for i in range(3):
        _step(model, optimizer, i)
    path = _save(tmp_path, 3, model, optimizer)
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "config.yaml", "dcp", "state-rank00000.pt"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000003"

    fresh, fresh_optimizer = _model_and_optimizer(1)  # different weights, empty optimizer state
    state = ckpt.load_checkpoint(path, fresh, [fresh_optimizer])
    assert state["global_step"] == 3 and state["note"] == "x"
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert _step(model, optimizer, 3) == _step(fresh, fresh_optimizer, 3)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)  # same Adam moments and step count gave the same update


def test_keep_last_rotates_old_checkpoints(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, optimizer, keep_last=2)
    assert [p.name for p in checkpoint_dirs.complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert checkpoint_dirs.latest_checkpoint(tmp_path).name == "step_00000004"


@pytest.mark.parametrize("failing", ["dcp.save", "marker", "rename"])
def test_a_crash_while_saving_leaves_no_visible_checkpoint(tmp_path: Path, monkeypatch, failing: str) -> None:
    model, optimizer = _model_and_optimizer(0)
    _save(tmp_path, 1, model, optimizer)

    def crash(*args, **kwargs):
        raise OSError("disk on fire")

    if failing == "dcp.save":
        monkeypatch.setattr(ckpt.dcp, "save", crash)
    elif failing == "marker":
        original = ckpt._write_durably
        monkeypatch.setattr(ckpt, "_write_durably", lambda p, d: crash() if p.name == ckpt.MARKER else original(p, d))
    else:  # the rename that publishes the directory (DCP renames its own files too)
        original_rename = os.rename
        monkeypatch.setattr(
            os, "rename", lambda a, b: crash() if Path(a).name.startswith(".step_") else original_rename(a, b)
        )
    with pytest.raises(OSError, match="disk on fire"):
        _save(tmp_path, 2, model, optimizer)
    monkeypatch.undo()

    assert checkpoint_dirs.latest_checkpoint(tmp_path).name == "step_00000001"
    assert (tmp_path / "latest").read_text().strip() == "step_00000001"
    assert not (tmp_path / "step_00000002").exists()
    _save(tmp_path, 2, model, optimizer)  # the next save cleans up the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001", "step_00000002"]


def test_only_incomplete_checkpoints_fail_loudly(tmp_path: Path) -> None:
    assert checkpoint_dirs.latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / ".step_00000005.tmp").mkdir()
    (tmp_path / "step_00000004").mkdir()  # no marker: never a checkpoint
    with pytest.raises(UsageError, match="Every checkpoint under .* is incomplete .* refusing to start over"):
        checkpoint_dirs.latest_checkpoint(tmp_path)
    with pytest.raises(UsageError, match="is not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step_00000004", _model_and_optimizer(0)[0], [])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["dcp/.metadata", "state-rank00000.pt"])
def test_a_crafted_pickle_in_a_checkpoint_never_executes(tmp_path: Path, target: str) -> None:
    model, optimizer = _model_and_optimizer(0)
    path = _save(tmp_path / "ckpts", 1, model, optimizer)
    marker = tmp_path / "pwned"
    if target.endswith(".pt"):
        torch.save({"global_step": 1, "evil": _Exploit(marker)}, path / target)
    else:
        (path / target).write_bytes(pickle.dumps(_Exploit(marker)))
    fresh, fresh_optimizer = _model_and_optimizer(1)
    with pytest.raises(UsageError, match="Refusing to load"):
        ckpt.load_checkpoint(path, fresh, [fresh_optimizer])
    assert not marker.exists()


def test_state_that_weights_only_cannot_load_is_refused_when_saving(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    with pytest.raises(TypeError, match="checkpoint state must hold only tensors"):
        ckpt.save_checkpoint(tmp_path, 1, model, [optimizer], {"object": _Exploit(tmp_path / "x")}, "", 2)
    assert checkpoint_dirs.complete_checkpoints(tmp_path) == []
