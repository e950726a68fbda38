"""``launcher=slurm``: write an sbatch script into the run directory and submit it.

The job runs the very same ``train`` command (the same overrides, ``run.dir``
pinned, ``checkpoint.resume=auto``) once per task through ``srun``, so a Slurm
run and a local run are one program; inside the job step, this launcher just
runs the training. Ranks and world size come from Slurm's variables
(``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``); the master address is
the first node's ``NodeAddr`` as Slurm knows it, resolved by ``scontrol`` on
the host, because node names need not be in DNS and ``scontrol`` may be
missing inside a container.

Preemption: ``--signal=USR1@<launcher.signal_seconds>`` warns the tasks before
the time limit; they save a checkpoint, leave a marker and stop, and the
script (outside any container) requeues the job, array tasks included. Extra
``#SBATCH`` lines, environment setup (modules, virtual environments) and
``srun`` arguments (containers) are config, not code edits.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jevons.framework.errors import UsageError

if TYPE_CHECKING:
    from jevons.framework.config.schema import Config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.framework.run import RunResult

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


@dataclass
class SlurmLauncherConfig:
    name: str = "slurm"
    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs per node; 0 for a CPU job (gloo)."""
    tasks_per_node: int | None = None
    """Processes per node; null means one per GPU, or one on CPU."""
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str = "01:00:00"
    """Slurm time limit: minutes, MM:SS, HH:MM:SS or D-HH:MM:SS."""
    job_name: str | None = None
    """Null means ``jevons-<recipe>``."""
    signal_seconds: int = 90
    """Seconds before the time limit at which tasks get SIGUSR1, checkpoint and requeue."""
    sbatch_args: list[str] = field(default_factory=list)
    """Extra ``#SBATCH`` lines, e.g. ``[--qos=high, --constraint=h100]``."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before ``srun``: ``module load cuda``, ``source .venv/bin/activate``."""
    srun_args: list[str] = field(default_factory=list)
    """Extra ``srun`` arguments, e.g. ``[--container-image=nvcr.io/..., --container-mounts=/data:/data]``."""
    python: str | None = None
    """The interpreter the tasks run; null means this one."""
    dry_run: bool = False
    """Print the script and submit nothing."""

    def __post_init__(self) -> None:
        from jevons.framework.config.schema import require

        require(self.nodes >= 1, "launcher.nodes", self.nodes, "a positive integer")
        require(self.gpus_per_node >= 0, "launcher.gpus_per_node", self.gpus_per_node, "0 or more")
        if self.tasks_per_node is not None:
            require(
                self.tasks_per_node >= 1, "launcher.tasks_per_node", self.tasks_per_node, "a positive integer or null"
            )
        require(self.signal_seconds > 0, "launcher.signal_seconds", self.signal_seconds, "a positive number of seconds")
        require(bool(_TIME.match(self.time)), "launcher.time", self.time, "minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")

    @property
    def tasks(self) -> int:
        """Processes per node."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks


def launch_slurm(manager: PluginManager, config: Config, overrides: Sequence[str]) -> RunResult | None:
    from jevons.framework.preemption import under_slurm
    from jevons.framework.run import run_training

    if under_slurm():
        return run_training(manager, config)
    submit(config, overrides)
    return None


def submit(config: Config, overrides: Sequence[str]) -> None:
    from jevons.framework.rundir import choose_run_dir, config_yaml

    launcher = config.launcher
    assert isinstance(launcher, SlurmLauncherConfig), "launcher=slurm composes a SlurmLauncherConfig"
    run_dir = choose_run_dir(config).resolve()
    script = sbatch_script(config, overrides, run_dir)
    if launcher.dry_run:
        print(script, end="")
        return None
    slurm_dir = run_dir / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml(config))
    path = slurm_dir / "job.sbatch"
    path.write_text(script)
    job_id = _sbatch(path)
    print(f"submitted job {job_id}: {launcher.nodes} node(s) x {launcher.tasks} task(s)")
    print(f"  script: {path}")
    print(f"  log:    {slurm_dir / f'{job_id}.out'}")
    print(f"  run:    {run_dir}")
    return None


def sbatch_script(config: Config, overrides: Sequence[str], run_dir: Path) -> str:
    """The job script for ``config``; pinned by a test (``launcher.dry_run=true`` prints it)."""
    slurm: SlurmLauncherConfig = config.launcher  # type: ignore[assignment]
    requeue = [f"--signal=USR1@{slurm.signal_seconds}", "--requeue"]
    directives = _directives(slurm, slurm.job_name or f"jevons-{config.recipe}", run_dir / "slurm", requeue)
    kept = [o for o in overrides if not o.startswith(("run.dir=", "checkpoint.resume=", "launcher.dry_run="))]
    command = [
        slurm.python or sys.executable,
        "-m",
        "jevons.framework.cli.train",
        *kept,
        f"run.dir={run_dir}",
        "checkpoint.resume=auto",
    ]
    srun = ["srun", "--kill-on-bad-exit=1", *slurm.srun_args]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "# Written by `train ... launcher=slurm`; the tasks run the same train command, resuming automatically.",
        *slurm.setup,
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# Slurm's address for the first node: node names need not resolve.",
        'export MASTER_ADDR=$(scontrol show node "$head_node" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p")',
        'export MASTER_ADDR="${MASTER_ADDR:-$(hostname)}"',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export PYTHONSAFEPATH=1",
        'echo "jevons: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"',
        "status=0",
        f"{shlex.join(srun)} \\",
        f"    {shlex.join(command)} || status=$?",
        "# The tasks leave this marker after saving a checkpoint on the time-limit warning.",
        f'marker="{run_dir}/slurm/requeue-$SLURM_JOB_ID"',
        'if [ -f "$marker" ]; then',
        '    rm -f "$marker"',
        '    job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"',
        '    job="${job:-$SLURM_JOB_ID}"',
        "    if command -v scontrol >/dev/null; then",
        '        echo "jevons: checkpoint saved before the time limit; requeueing job $job"',
        '        scontrol requeue "$job"',
        "    else",
        '        echo "jevons: checkpoint saved, but scontrol is not on PATH: job $job was not requeued; submit the same command again to resume" >&2',
        "    fi",
        "fi",
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def _directives(slurm: SlurmLauncherConfig, job_name: str, log_dir: Path, after_time: Sequence[str] = ()) -> list[str]:
    """The ``#SBATCH`` lines of a job: its size, place and time, ``after_time``, its log, then ``sbatch_args``."""
    return [
        f"--job-name={job_name}",
        f"--nodes={slurm.nodes}",
        f"--ntasks-per-node={slurm.tasks}",
        *([f"--gpus-per-node={slurm.gpus_per_node}"] if slurm.gpus_per_node else []),
        *([f"--cpus-per-task={slurm.cpus_per_task}"] if slurm.cpus_per_task else []),
        *([f"--partition={slurm.partition}"] if slurm.partition else []),
        *([f"--account={slurm.account}"] if slurm.account else []),
        f"--time={slurm.time}",
        *after_time,
        "--open-mode=append",
        f"--output={log_dir}/%j.out",
        *slurm.sbatch_args,
    ]


def import_job_script(slurm: SlurmLauncherConfig, arguments: Sequence[str], out: Path) -> str:
    """The job script of ``jevons data import ARGUMENTS launcher=slurm``: every task a rank of the same
    import (the engine reads ``SLURM_PROCID``/``SLURM_NTASKS``); a job cut short resumes when resubmitted."""
    command = [slurm.python or sys.executable, "-m", "jevons.framework.cli.jevons", "data", "import", *arguments]
    srun = ["srun", "--kill-on-bad-exit=1", *slurm.srun_args]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in _directives(slurm, slurm.job_name or "jevons-import", out / ".import" / "slurm")),
        "",
        "# Written by `jevons data import ... launcher=slurm`; submit the same command again to resume it.",
        *slurm.setup,
        "export PYTHONSAFEPATH=1",
        'echo "jevons: import job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, $SLURM_NTASKS ranks"',
        f"{shlex.join(srun)} \\",
        f"    {shlex.join(command)}",
        "",
    ]
    return "\n".join(lines)


def submit_import(slurm: SlurmLauncherConfig, arguments: Sequence[str], out: Path) -> None:
    """Write the import's job script into ``OUT/.import/slurm/`` and submit it (or print it: ``dry_run``)."""
    script = import_job_script(slurm, arguments, out)
    if slurm.dry_run:
        print(script, end="")
        return
    folder = out / ".import" / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.sbatch"
    path.write_text(script)
    job_id = _sbatch(path)
    print(f"submitted import job {job_id}: {slurm.nodes} node(s) x {slurm.tasks} task(s)")
    print(f"  log: {folder / f'{job_id}.out'}")
    print(f"  out: {out}")


def _sbatch(path: Path) -> str:
    try:
        result = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UsageError(
            f"sbatch is not on PATH: cannot submit {path}. Run on a Slurm login node, or use launcher=local."
        ) from None
    if result.returncode != 0:
        raise UsageError(f"sbatch refused {path}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]
