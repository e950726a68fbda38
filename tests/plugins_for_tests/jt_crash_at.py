"""Kill this process (SIGKILL, os._exit or an exception) right after a given training step."""

import os
import signal
from dataclasses import dataclass

from jevons.framework.plugin import hookimpl


@dataclass
class CrashAtConfig:
    step: int = 0
    how: str = "sigkill"
    rank: int = 0


@hookimpl
def register_config(register):
    register("jt_crash_at", CrashAtConfig)


@hookimpl
def register_callbacks(register, config):
    import pytorch_lightning as pl
    import torch.distributed as dist

    cfg = config.jt_crash_at

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            rank = dist.get_rank() if dist.is_initialized() else 0
            if trainer.global_step == cfg.step and rank == cfg.rank:
                if cfg.how == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif cfg.how == "exit":
                    os._exit(3)
                raise RuntimeError(f"injected crash after step {cfg.step}")

    register(Crash())
