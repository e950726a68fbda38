"""Stopping on a signal without losing work: SIGTERM, and Slurm's warning before the time limit.

* **SIGTERM** (a cancel, a preemption): save a checkpoint at the end of the
  current step and stop; the process exits 0.
* **SIGUSR1** under Slurm (``#SBATCH --signal=USR1@N``, sent N seconds before
  the time limit): save a checkpoint, leave a requeue marker in the run
  directory (``slurm/requeue-<job id>``), stop, and exit with
  :data:`REQUEUE_EXIT_CODE`. The job script, which runs on the host outside any
  container, sees the marker and requeues the job (``scontrol requeue``, array
  tasks included); the requeued job resumes with ``checkpoint.resume=auto``. A
  marker rather than the exit code, because ``srun`` reports the highest exit
  code of its tasks, and a peer stopped by ``--kill-on-bad-exit`` reports 143.

The signal handler only records the request; the checkpoint is written at the
next step boundary, and the request is all-reduced (max) so every rank stops
at the same step. This replaces Lightning's handlers, which run a collective
inside the SIGTERM handler and write their own ``hpc_ckpt`` files.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL: checkpoint saved, requeue me."""

NONE, STOP, REQUEUE = 0, 1, 2


class Preemption(pl.Callback):
    def __init__(self, checkpoint: Any, requeue_marker: Path | None) -> None:
        self.checkpoint = checkpoint
        self.requeue_marker = requeue_marker
        self.under_slurm = requeue_marker is not None
        self.requested = NONE
        self.stopped: str | None = None
        """``"sigterm"`` or ``"requeue"`` once the run stopped on a signal."""
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its own handlers: ours replace them for the training loop.
        signals = [signal.SIGTERM] + ([signal.SIGUSR1] if self.under_slurm else [])
        for signum in signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        # No I/O and no collectives in a signal handler: only remember what was asked.
        self.requested = max(self.requested, REQUEUE if signum == signal.SIGUSR1 else STOP)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        wanted = self.requested
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(wanted)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = int(flag.item())
        if wanted == NONE or self.stopped:
            return
        self.checkpoint.save(trainer)
        if wanted == REQUEUE and self.requeue_marker is not None:
            if trainer.is_global_zero:
                self.requeue_marker.parent.mkdir(parents=True, exist_ok=True)
                self.requeue_marker.write_text(f"{trainer.global_step}\n")
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.barrier()  # the marker exists before any rank exits
        self.stopped = "requeue" if wanted == REQUEUE else "sigterm"
        trainer.should_stop = True
        if trainer.is_global_zero:
            reason = "Slurm's time-limit warning (SIGUSR1)" if wanted == REQUEUE else "SIGTERM"
            print(
                f"jevons: {reason} received: checkpoint saved at step {trainer.global_step}, stopping; "
                f"{'the job script requeues the job' if wanted == REQUEUE else 'resume with checkpoint.resume=auto'}.",
                file=sys.stderr,
                flush=True,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def under_slurm() -> bool:
    """Inside a Slurm job step (srun), where the requeue signal is meaningful."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ


def requeue_marker(run_dir: Path) -> Path | None:
    """Where the job script looks for the request to requeue this job; None outside Slurm."""
    if not under_slurm():
        return None
    return run_dir / "slurm" / f"requeue-{os.environ['SLURM_JOB_ID']}"
