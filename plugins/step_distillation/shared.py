"""One frozen base for student, teacher and fake score: step distillation with LoRA.

Video-BLADE distils Wan2.1 with LoRA; its teacher is the frozen base model and
its fake score a second adapter on that base. With ``plugins=[lora,
step_distillation]`` and the student starting from the teacher's weights, the
teacher here is the student's model with every adapter off and the fake score
the same model with only the ``fake`` adapter on, so the base weights exist once
in memory (three copies otherwise). Both attend densely where the student
attends block-sparsely (``dense_attention``): sparsity is switched per call on
the shared modules, not by replacing them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jevons.framework.adapters import active_adapter
from jevons.framework.attention import dense_attention

FAKE_ADAPTER = "fake"


class SharedBaseView(nn.Module):
    """The student's model computing as another network over its frozen base: with ``adapter`` alone
    active (None: the base itself), attention dense.

    It holds no parameters and no submodules (the model sits in a list), so ``requires_grad_``,
    ``eval`` and ``to`` on the view leave the student as it is.
    """

    def __init__(self, model: nn.Module, adapter: str | None) -> None:
        super().__init__()
        self._model = [model]
        self.adapter = adapter

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, condition: Any) -> torch.Tensor:
        with active_adapter(self.model, self.adapter), dense_attention():
            return self.model(noisy, sigma, condition)

    def get_submodule(self, target: str) -> nn.Module:
        return self.model.get_submodule(target)  # conditioner_of(view): the student's conditioner

    def finish(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model.finish(samples)  # type: ignore[operator]
