"""N processes of one command on this machine, as ranks: what ``launcher.nproc=N`` runs.

Each process gets torchrun-style variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and its share of the cores. If one fails the others
are stopped, so a crash never leaves a collective (or a rank waiting on a file) hanging,
and the failing rank's exit code is returned. Light (no torch): ``train`` and
``jevons data import`` both use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from jevons.framework.errors import UsageError


def run_ranks(command: Sequence[str], nproc: int) -> None:
    """Run ``command`` as ranks 0..nproc-1 on this machine (torchrun's variables, the cores split between
    them); if one fails, stop the others and raise :class:`RankFailed`. ``jevons data import`` uses it too."""
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    processes = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=str(threads),
            PYTHONSAFEPATH="1",
        )
        processes.append(subprocess.Popen(list(command), env=env))
    failed = _wait(processes)
    if failed is not None:
        raise RankFailed(*failed, nproc)


class RankFailed(UsageError):
    """A rank of a multi-process run failed; its own output says why. Exits with the rank's code."""

    def __init__(self, rank: int, code: int, nproc: int) -> None:
        self.exit_code = code if code > 0 else 1
        super().__init__(
            f"rank {rank} of {nproc} exited with code {code}; the other ranks were stopped (its output is above)."
        )


def _wait(processes: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for all; on the first failure stop the rest. Returns ``(rank, code)`` of the failure, if any."""
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = next(((rank, code) for rank, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                _stop(processes)
                return failed
            if all(code == 0 for code in codes):
                return None
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(processes)
        raise


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
