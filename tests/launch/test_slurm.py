"""The Slurm launcher against a real two-node cluster on this machine (tests/slurm/cluster.sh), not mocks."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jevons.framework.errors import UsageError

CLUSTER = Path(__file__).resolve().parents[1] / "slurm" / "cluster.sh"
TINY = [
    "recipe=llm_tiny",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "data.seq_len=32",
    "data.num_workers=0",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=0",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A running two-node cluster; the environment its clients (and the jobs) need."""
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, JEVONS_SLURM_DIR=str(state))
    subprocess.run(["bash", str(CLUSTER), "start"], env=env, check=True, timeout=600)
    yield {"JEVONS_SLURM_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf")}
    subprocess.run(["bash", str(CLUSTER), "stop"], env=env, timeout=120, check=False)


def _submit(command, slurm: dict[str, str], cwd: Path, plugin_site: Path, *overrides: str) -> tuple[str, Path]:
    result = command(["train", *TINY, "launcher=slurm", *overrides], cwd=cwd, PYTHONPATH=str(plugin_site), **slurm)
    assert result.returncode == 0, result.stderr[-3000:]
    job = re.search(r"submitted job (\d+)", result.stdout).group(1)
    run_dir = Path(re.search(r"run:\s+(\S+)", result.stdout).group(1))
    return job, run_dir


def _job(slurm: dict[str, str], job: str) -> dict[str, str]:
    text = subprocess.run(
        ["scontrol", "show", "job", "-o", job], env={**os.environ, **slurm}, capture_output=True, text=True, check=False
    ).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def _wait(slurm: dict[str, str], job: str, states: set[str], timeout: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(slurm, job)
        if info.get("JobState") in states:
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} never reached {states}: {_job(slurm, job)}")


def _wait_nodes_idle(slurm: dict[str, str], timeout: float = 120) -> None:
    """Until every node has finished cleaning up after the last job (no node COMPLETING or ALLOCATED)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env={**os.environ, **slurm}, capture_output=True, text=True, check=False
        ).stdout.split()
        if states and all(state == "idle" for state in states):
            return
        time.sleep(0.5)
    raise AssertionError(f"nodes never became idle: {states}")


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def test_dry_run_prints_the_pinned_script(command, tmp_path: Path) -> None:
    result = command(
        [
            "train",
            "recipe=llm_tiny",
            "launcher=slurm",
            "launcher.nodes=2",
            "launcher.gpus_per_node=8",
            "launcher.partition=gpu",
            "launcher.time=02:00:00",
            "launcher.python=python3",
            'launcher.setup=["module load cuda"]',
            'launcher.sbatch_args=["--qos=high"]',
            'launcher.srun_args=["--container-image=nvcr.io/nvidia/pytorch"]',
            "launcher.dry_run=true",
            "trainer.max_steps=20",
            "run.dir=/runs/demo",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED_SCRIPT
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


EXPECTED_SCRIPT = """#!/bin/bash
#SBATCH --job-name=jevons-llm_tiny
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --partition=gpu
#SBATCH --time=02:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/runs/demo/slurm/%j.out
#SBATCH --qos=high

# Written by `train ... launcher=slurm`; the tasks run the same train command, resuming automatically.
module load cuda
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Slurm's address for the first node: node names need not resolve.
export MASTER_ADDR=$(scontrol show node "$head_node" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p")
export MASTER_ADDR="${MASTER_ADDR:-$(hostname)}"
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export PYTHONSAFEPATH=1
echo "jevons: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"
status=0
srun --kill-on-bad-exit=1 --container-image=nvcr.io/nvidia/pytorch \\
    python3 -m jevons.framework.cli.train recipe=llm_tiny launcher=slurm launcher.nodes=2 launcher.gpus_per_node=8 launcher.partition=gpu launcher.time=02:00:00 launcher.python=python3 'launcher.setup=["module load cuda"]' 'launcher.sbatch_args=["--qos=high"]' 'launcher.srun_args=["--container-image=nvcr.io/nvidia/pytorch"]' trainer.max_steps=20 run.dir=/runs/demo checkpoint.resume=auto || status=$?
# The tasks leave this marker after saving a checkpoint on the time-limit warning.
marker="/runs/demo/slurm/requeue-$SLURM_JOB_ID"
if [ -f "$marker" ]; then
    rm -f "$marker"
    job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
    job="${job:-$SLURM_JOB_ID}"
    if command -v scontrol >/dev/null; then
        echo "jevons: checkpoint saved before the time limit; requeueing job $job"
        scontrol requeue "$job"
    else
        echo "jevons: checkpoint saved, but scontrol is not on PATH: job $job was not requeued; submit the same command again to resume" >&2
    fi
fi
exit "$status"
"""


@pytest.mark.parametrize(
    "override, message",
    [
        ("launcher.nodes=0", "launcher.nodes=0 is not valid: expected a positive integer"),
        ("+launcher.partiton=debug", "Unknown key 'launcher.partiton'. Did you mean 'launcher.partition'?"),
        ("launcher.time=1h", "launcher.time='1h' is not valid: expected minutes, MM:SS, HH:MM:SS or D-HH:MM:SS"),
        ("parallel.tensor=4", "does not divide the world of 2 process(es)"),
    ],
)
def test_bad_launcher_config_fails_before_submission(train, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        train([*TINY, "launcher=slurm", "launcher.nodes=2", override, f"run.root={tmp_path}"])
    assert list(tmp_path.iterdir()) == []


def test_two_node_job_equals_one_process_with_the_same_global_batch(
    command, slurm, plugin_site, tmp_path: Path, train
) -> None:
    job, run_dir = _submit(
        command,
        slurm,
        tmp_path,
        plugin_site,
        "launcher.nodes=2",
        "data.batch_size=2",
        "trainer.max_steps=12",
        f"run.root={tmp_path}",
    )
    info = _wait(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (run_dir / "slurm" / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "on n[1-2], master 127.0.0.1" in log  # two nodes; the master address came from Slurm's NodeAddr
    single = train([*TINY, "data.batch_size=4", "trainer.max_steps=12", f"run.dir={tmp_path / 'single'}"])
    slurm_losses, local = _losses(run_dir), _losses(single.run_dir)
    assert slurm_losses.keys() == local.keys() and len(local) == 12
    assert max(abs(slurm_losses[k] - local[k]) for k in local) <= 1e-5


def test_time_limit_warning_checkpoints_requeues_and_resumes_to_the_same_weights(
    command, slurm, plugin_site, tmp_path: Path
) -> None:
    steps = ["trainer.max_steps=120", "data.batch_size=2", "plugins=[jt_dump_state]"]
    job, run_dir = _submit(command, slurm, tmp_path, plugin_site, "launcher.nodes=2", *steps, f"run.root={tmp_path}")
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.csv").exists() or len(_losses(run_dir)) < 25:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], env={**os.environ, **slurm}, check=True)
    _wait(slurm, job, {"PENDING"}, timeout=300)
    # Slurm holds a requeued job for a while (BeginTime); release it sooner rather than wait in a test, but
    # not in the second the nodes revoked the first run's credential: a credential created in that same
    # second is refused ("Job credential revoked", the job then FAILS without running; seen once in ~10 runs).
    _wait_nodes_idle(slurm)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env={**os.environ, **slurm}, check=True)
    info = _wait(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (run_dir / "slurm" / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    saved = int(re.search(r"checkpoint saved at step (\d+), stopping", log).group(1))
    assert f"requeueing job {job}" in log
    assert f"resuming from {run_dir}/checkpoints/step_{saved:08d}" in log  # the log shows the resume step

    straight = tmp_path / "straight"
    result = command(
        ["train", *TINY, *steps, "launcher.nproc=2", f"run.dir={straight}"], cwd=tmp_path, PYTHONPATH=str(plugin_site)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        preempted, uninterrupted = (
            torch.load(d / f"state-rank{rank}.pt", weights_only=True)["params"] for d in (run_dir, straight)
        )
        for name, (_, value) in uninterrupted.items():
            assert torch.equal(preempted[name][1], value), name


def test_without_slurm_requeue_the_checkpoint_is_saved_and_the_exit_is_clear(plugin_site, tmp_path: Path) -> None:
    """A task that gets the warning outside a batch script (an `srun` by hand, a container without
    scontrol): it saves, leaves the marker, says so, and exits 75 instead of losing the work."""
    env = dict(
        os.environ,
        SLURM_JOB_ID="4242",
        SLURM_PROCID="0",
        SLURM_NTASKS="1",
        SLURM_LOCALID="0",
        PYTHONSAFEPATH="1",
        PYTHONPATH=str(plugin_site),
    )
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jevons.framework.cli.train",
            *TINY,
            "trainer.max_steps=100000",
            "data.batch_size=2",
            f"run.dir={run_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.csv").exists() or len(_losses(run_dir)) < 5:
        assert time.monotonic() < deadline and process.poll() is None, (
            process.stderr.read() if process.poll() else "slow"
        )
        time.sleep(0.3)
    process.send_signal(signal.SIGUSR1)
    _out, err = process.communicate(timeout=300)
    assert process.returncode == 75, err[-3000:]
    step = int(re.search(r"checkpoint saved at step (\d+), stopping", err).group(1))
    assert (run_dir / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists()
    assert (run_dir / "slurm" / "requeue-4242").read_text().strip() == str(step)
    assert "Traceback" not in err


def test_a_two_node_import_job_writes_the_samples_of_a_local_import(command, slurm, tmp_path: Path) -> None:
    import json

    from jevons.framework.data.importing.engine import run_import
    from jevons.framework.data.reader import ShardDataset
    from jevons.framework.data.shards import read_index
    from jevons.recipes.llm.importer import TextImporter, TextImportOptions

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"document {n}: " + "word " * (n % 13 + 3)}) + "\n" for n in range(60))
    )
    settings = ["vocab_size=280", "workers=0", "records_per_shard=8", "val_fraction=0.2", "progress=false"]
    local = tmp_path / "local"
    run_import(
        TextImporter(
            TextImportOptions(
                out=str(local), vocab_size=280, workers=0, records_per_shard=8, val_fraction=0.2, progress=False
            )
        ),
        [str(corpus)],
    )
    _wait_nodes_idle(slurm)
    out = tmp_path / "slurm-import"
    result = command(
        [
            "jevons",
            "data",
            "import",
            "text",
            str(corpus),
            f"out={out}",
            *settings,
            "launcher=slurm",
            "launcher.nodes=2",
        ],
        cwd=tmp_path,
        **slurm,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    job = re.search(r"submitted import job (\d+)", result.stdout).group(1)
    info = _wait(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (out / ".import" / "slurm" / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "2 ranks" in log
    assert sorted(p.name for p in (out / ".import" / "ranks").glob("*/of-2/*.done")) == ["0.done", "1.done"]
    assert (out / "train.json").read_text().replace(str(out), "") == (local / "train.json").read_text().replace(
        str(local), ""
    ).replace('"local/', f'"{out.name}/')

    def samples(folder: Path) -> dict[str, dict[str, bytes]]:
        found = {}
        for split in ("train", "val"):
            dataset = ShardDataset(read_index(folder / f"{split}.json"), lambda s: s, "strict")
            found[split] = {dataset.raw(i)["__key__"]: dataset.raw(i)["tokens.npy"] for i in range(len(dataset))}
        return found

    assert samples(out) == samples(local) and sum(len(split) for split in samples(local).values()) == 60
