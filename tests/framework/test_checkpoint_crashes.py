"""Crashes at every point of a checkpoint save: a restart always finds the newest complete checkpoint, whole.

Every file-system step of a save (each fsync, rename, replace and tree removal,
DCP's own included) is a crash point, crashed both before and after the step:
in-process with an exception, and with a real ``os._exit`` in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from jevons.framework import checkpoint as ckpt
from jevons.framework import checkpoint_dirs

OPERATIONS = (("os", "fsync"), ("os", "rename"), ("os", "replace"), ("shutil", "rmtree"))


class Crash(Exception):
    pass


def _model(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(3, 5)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _save(root: Path, step: int, model, optimizer) -> None:
    ckpt.save_checkpoint(root, step, model, [optimizer], {"global_step": step}, "seed: 0\n", keep_last=2)


def _instrument(monkeypatch: pytest.MonkeyPatch, crash_at: int, after: bool) -> list[str]:
    """Count file-system steps; raise at number ``crash_at`` (before or after performing it)."""
    events: list[str] = []
    for module_name, name in OPERATIONS:
        module = sys.modules[module_name]
        original: Callable = getattr(module, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            events.append(_name)
            if len(events) == crash_at and not after:
                raise Crash(f"before {_name}")
            result = _original(*args, **kwargs)
            if len(events) == crash_at and after:
                raise Crash(f"after {_name}")
            return result

        monkeypatch.setattr(module, name, wrapped)
    return events


def _events_in_one_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    model, optimizer = _model(0)
    for step in (1, 2):
        _save(tmp_path / "count", step, model, optimizer)
    with monkeypatch.context() as patch:
        events = _instrument(patch, crash_at=-1, after=False)
        _save(tmp_path / "count", 3, model, optimizer)  # the third save also rotates the oldest away
    return len(events)


def _check_restart(root: Path, snapshots: dict[int, dict[str, torch.Tensor]]) -> int:
    """What a restart sees: the newest complete checkpoint, loading to exactly what was saved."""
    for directory in root.iterdir():
        if directory.name.startswith("step_"):
            assert checkpoint_dirs.is_complete(directory), f"{directory} is visible but incomplete"
    newest = checkpoint_dirs.latest_checkpoint(root)
    assert newest is not None
    step = checkpoint_dirs.step_of(newest)
    model, optimizer = _model(99)
    ckpt.load_checkpoint(newest, model, [optimizer])
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[step][key]), f"{newest} loaded a different {key}"
    return step


def test_every_crash_point_of_a_save_leaves_the_newest_complete_checkpoint(tmp_path: Path, monkeypatch) -> None:
    per_save = _events_in_one_save(tmp_path, monkeypatch)
    assert per_save >= 14  # fsyncs of every file and folder, DCP's renames, ours, latest, rotation
    outcomes = []
    for crash_at in range(1, per_save + 1):
        for after in (False, True):
            root = tmp_path / f"crash-{crash_at}-{after}"
            model, optimizer = _model(0)
            snapshots = {}
            for step in (1, 2, 3):
                _train_step(model, optimizer)
                snapshots[step] = _snapshot(model)
                if step < 3:
                    _save(root, step, model, optimizer)
                    continue
                with monkeypatch.context() as patch:
                    _instrument(patch, crash_at, after)
                    with pytest.raises((Crash, CheckpointException)):  # DCP wraps what happens inside it
                        _save(root, step, model, optimizer)
            outcomes.append(_check_restart(root, snapshots))
    assert len(outcomes) >= 28
    assert set(outcomes) == {2, 3}  # early crashes keep step 2; once step 3 is renamed into place, it is the newest
    # And the next save after any crash succeeds and becomes the newest.
    model, optimizer = _model(0)
    _save(tmp_path / "crash-1-False", 4, model, optimizer)
    assert checkpoint_dirs.step_of(checkpoint_dirs.latest_checkpoint(tmp_path / "crash-1-False")) == 4


CHILD = textwrap.dedent(
    """
    import os, sys, torch
    from pathlib import Path
    from jevons.framework import checkpoint as ckpt
    root, crash_at = Path(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in (1, 2):
        model(torch.randn(3, 5)).sum().backward(); optimizer.step(); optimizer.zero_grad()
        torch.save(model.state_dict(), root.parent / f"expected-{step}.pt")
        if step == 2:  # the second save dies, for real, at its crash_at-th fsync
            count, original = [0], os.fsync
            def fsync(fd):
                original(fd)
                count[0] += 1
                if count[0] == crash_at:
                    os._exit(17)
            os.fsync = fsync
        ckpt.save_checkpoint(root, step, model, [optimizer], {"global_step": step}, "", 2)
    """
)


@pytest.mark.parametrize("crash_at", [1, 3, 5, 7])
def test_a_real_process_exit_mid_save_never_leaves_a_partial_checkpoint(tmp_path: Path, crash_at: int) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    env = dict(os.environ, PYTHONSAFEPATH="1")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(crash_at)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 17, result.stderr[-2000:]
    snapshots = {step: torch.load(tmp_path / f"expected-{step}.pt", weights_only=True) for step in (1, 2)}
    assert _check_restart(root, snapshots) in (1, 2)
