"""The LowDiff cascade: conditions from the sample's own lower resolution, one set of weights, staged sampling."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from jevons.framework.config.compose import compose_config
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.plugins import lowres_cascade
from jevons.plugins.lowres_cascade.cascade import (
    CascadeObjective,
    CascadeSampler,
    low_resolution_condition,
    widen_for_condition,
)
from jevons.recipes.diffusion.conditioning import Condition
from jevons.recipes.diffusion.data import NO_DIGIT
from jevons.recipes.diffusion.family import DiffusionFamily

SMALL = [
    "recipe=image_lowdiff_tiny",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.head_dim=16",
    "model.ffn_dim=32",
]


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


@pytest.fixture(scope="module")
def model(manager):
    config = compose_config(manager, SMALL)
    torch.manual_seed(0)
    model = DiffusionFamily().build_model(config)
    lowres_cascade.modify_model(model, config)
    return model


def test_widening_the_input_changes_nothing_until_trained(manager) -> None:
    config = compose_config(manager, SMALL)
    torch.manual_seed(0)
    model = DiffusionFamily().build_model(config)
    x, sigma, labels = (
        torch.randn(2, 1, 1, 16, 16),
        torch.tensor([0.2, 0.7]),
        Condition(labels=torch.tensor([[1, NO_DIGIT], [2, 3]])),
    )
    hidden = model.conditioner(labels)
    before = model.transformer(x, sigma * 1000, hidden, return_dict=False)[0]
    widen_for_condition(model)
    after = model.transformer(torch.cat([x, torch.randn_like(x)], 1), sigma * 1000, hidden, return_dict=False)[0]
    assert torch.allclose(before, after, atol=1e-5) and model.transformer.config.in_channels == 2


def test_the_condition_comes_only_from_the_previous_resolution() -> None:
    torch.manual_seed(1)
    clean = torch.randn(3, 1, 1, 16, 16)
    resolutions = [4, 8, 16]
    assert torch.equal(low_resolution_condition(clean, 0, resolutions), torch.zeros(3, 1, 1, 4, 4))
    condition = low_resolution_condition(clean, 2, resolutions)
    assert condition.shape == (3, 1, 1, 16, 16)
    # Detail finer than 8 px (a 16 px checkerboard, which 8 px averaging removes exactly) never reaches it:
    # the 16 px targets differ everywhere, the conditions do not.
    checkerboard = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    other = clean + 0.5 * checkerboard
    assert torch.allclose((other - clean).abs(), torch.full_like(clean, 0.5), atol=1e-6)
    # (exactly in the interior; the resampling filter is clamped at the border)
    assert (low_resolution_condition(other, 2, resolutions) - condition).abs().max() < 0.02
    interior = (low_resolution_condition(other, 2, resolutions) - condition)[..., 4:-4, 4:-4]
    assert interior.abs().max() < 1e-5
    assert (
        low_resolution_condition(other, 1, resolutions) - low_resolution_condition(clean, 1, resolutions)
    ).abs().max() < 0.02


def test_one_set_of_weights_serves_every_stage(model) -> None:
    seen = []
    hook = model.transformer.patch_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    objective = CascadeObjective([8, 16], [], condition_noise=0.2, condition_dropout=0.0)
    torch.manual_seed(3)
    out = objective(model, {"video": torch.rand(16, 1, 1, 16, 16) * 2 - 1, "labels": torch.full((16, 2), NO_DIGIT)})
    hook.remove()
    assert {tuple(s[-2:]) for s in seen} == {(8, 8), (16, 16)}  # both stages through the same patch embedding
    assert set(out.metrics) == {"loss_stage0", "loss_stage1"} and out.weight == 16
    stage_specific = [n for n, _ in model.named_parameters() if "stage" in n]
    assert stage_specific == ["stage_tokens.weight"]  # the only per-stage parameters: one token each


def test_staged_sampling_shapes(model) -> None:
    calls = []
    hook = model.transformer.patch_embedding.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    sampler = CascadeSampler(model, [(8, 3), (16, 2)], guidance=2.0, shift=1.0, condition_noise=0.05)
    out = sampler(Condition(labels=torch.tensor([[4, NO_DIGIT], [7, NO_DIGIT]])), (1, 1, 16, 16), seed=0)
    hook.remove()
    assert out.shape == (2, 1, 1, 16, 16) and out.abs().max() <= 1
    assert calls == [(4, 2, 1, 8, 8)] * 3 + [(4, 2, 1, 16, 16)] * 2  # CFG doubles the batch; input + condition channels
    assert sampler(Condition(labels=torch.tensor([[4, NO_DIGIT]])), (1, 1, 16, 16), stage_steps=[1, 1]).shape == (
        1,
        1,
        1,
        16,
        16,
    )


def test_bad_cascades_are_refused(manager) -> None:
    with pytest.raises(
        UsageError, match=r"the last lowres_cascade stage \(8 px\) must equal the generated size \(16 px"
    ):
        compose_config(manager, [*SMALL, "lowres_cascade.stages=[{res:4},{res:8}]"])
    with pytest.raises(UsageError, match=r"resolutions \[16, 8\] must be at least two, increasing"):
        compose_config(manager, [*SMALL, "lowres_cascade.stages=[{res:16},{res:8}]"])
    with pytest.raises(UsageError, match=r"does not support recipe family 'llm'"):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[lowres_cascade]"])


def test_a_short_run_lowers_the_loss_at_every_stage(train, run_root) -> None:
    result = train(
        [
            *SMALL,
            "data.batch_size=16",
            "data.num_workers=0",
            "trainer.max_steps=50",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=0",
            "optimizer.warmup_steps=0",
            "optimizer.lr=3e-3",
            "trainer.progress_bar=false",
            f"run.root={run_root}",
        ]
    )
    with open(result.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for stage in (0, 1):
        losses = [float(r[f"train/loss_stage{stage}"]) for r in rows if r.get(f"train/loss_stage{stage}")]
        assert len(losses) > 30 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), stage
