"""Each family's analytic training FLOPs equal what torch's FlopCounterMode counts on one real step of
its tiny model (forward and backward of the default objective): the acceptance bound is 5%, the formulas
count every matmul, so they are held to 0.1%.

FlopCounterMode counts matmuls and convolutions; on the CPU it sees no FLOPs in SDPA's fused kernel,
so the count runs with SDPA's math backend, whose batched matmuls it does see.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jevons.framework import distributed
from jevons.framework.build import build_model_and_objective
from jevons.framework.config.compose import compose_config
from jevons.framework.plugin_manager import PluginManager


def counted_and_analytic(overrides: list[str]) -> tuple[float, float]:
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, overrides)
    family = manager.family(config.family)
    with distributed.initialized(config.parallel):
        torch.manual_seed(0)
        model, objective, _ = build_model_and_objective(manager, family, config)
        dataset = family.build_dataset(config, "train")
        batch: dict[str, Any] = dataset.collate([dataset[i] for i in range(3)])  # an odd batch: no size coincidence
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            objective(model, batch).loss.backward()
        return float(counter.get_total_flops()), float(family.train_flops(model, batch))


@pytest.mark.parametrize("family", ["llm", "diffusion", "speech", "mixed_modal"])
def test_train_flops_match_a_flop_counter(request, smoke, family: str) -> None:
    overrides = list(smoke[family])
    if family == "speech":  # the session's small espeak-ng corpus, as the plugin-family matrix uses
        overrides.append(f"data.source={request.getfixturevalue('speech_corpus')}")
    counted, analytic = counted_and_analytic(overrides)
    assert counted > 0
    assert analytic == pytest.approx(counted, rel=1e-3), (analytic, counted)


def test_train_flops_of_the_text_to_video_model(wan_t2v) -> None:
    counted, analytic = counted_and_analytic(
        ["recipe=wan_t2v_tiny", f"model.pretrained={wan_t2v['pipeline']}", f"data.source={wan_t2v['latents']}"]
    )
    assert analytic == pytest.approx(counted, rel=1e-3), (analytic, counted)
