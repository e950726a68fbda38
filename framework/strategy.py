"""The Lightning strategy that adopts Jevons' process groups and owns the checkpoint format.

Lightning's own checkpoint plumbing stays (loop counters, LR schedulers and
callback states come back through ``fit(ckpt_path=...)``), but what reaches the
disk is the framework's format (:mod:`jevons.framework.checkpoint`): model and
optimizer tensors through DCP, by parameter name, loaded *in place* after the
optimizers exist (``restore_checkpoint_after_setup``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from pytorch_lightning.strategies import SingleDeviceStrategy

from jevons.framework.checkpoint import load_checkpoint, save_checkpoint, step_of


class JevonsStrategy(SingleDeviceStrategy):
    """One device per process; torch.distributed and Megatron's groups were set up by the launcher."""

    strategy_name = "jevons"

    def __init__(self, device: torch.device, config_yaml: str, keep_last: int) -> None:
        super().__init__(device=device)
        self.config_yaml = config_yaml
        self.keep_last = keep_last

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # optimizers must exist: their state is loaded in place

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        path = Path(filepath)
        state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        save_checkpoint(
            path.parent, step_of(path), self.lightning_module, self.optimizers, state, self.config_yaml, self.keep_last
        )

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        state = load_checkpoint(Path(checkpoint_path), self.lightning_module, self.optimizers)
        # Already loaded in place; Lightning only needs the keys to exist.
        return {**state, "state_dict": {}, "optimizer_states": []}

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True, assign: bool = False) -> None:
        """Loaded in place by :meth:`load_checkpoint`."""

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Loaded in place by :meth:`load_checkpoint`."""

    def remove_checkpoint(self, filepath: Any) -> None:
        """Rotation is the checkpoint format's job (``checkpoint.keep_last``)."""
