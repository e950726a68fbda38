"""``trainer.activation_checkpointing``: blocks rerun in backward, losses and gradients unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.activation_checkpointing import recomputing
from jevons.framework.build import build_model_and_objective, default_batch_sampler, family_blocks
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.data.loader import make_dataloader
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager


def _step(overrides: list[str]) -> dict[str, Any]:
    """One forward and backward of the family's model and objective on the first training batch:
    the loss, every gradient, the parameter names and how often the first attention module ran."""
    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, overrides)
    family = manager.family(config.family)
    with distributed.initialized(ParallelConfig()):
        torch.manual_seed(config.seed)
        model, objective, _ = build_model_and_objective(manager, family, config)
        dataset = family.build_dataset(config, "train")
        batch = next(iter(make_dataloader(dataset, default_batch_sampler(dataset, config, "train"), 0))).data
        name, _ = family.attention_modules(model)[0]
        flags: list[bool] = []
        model.get_submodule(name).register_forward_hook(lambda *_: flags.append(recomputing()))
        model.train()
        torch.manual_seed(0)
        loss = objective(model, batch).loss
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "grads": grads, "flags": flags, "model": model, "family": family}


@pytest.mark.parametrize("family", ["llm", "diffusion", "speech", "mixed_modal"])
def test_full_checkpointing_reruns_each_block_and_changes_no_loss_or_gradient(family: str, smoke) -> None:
    plain = _step(smoke[family])
    checkpointed = _step([*smoke[family], "trainer.activation_checkpointing=full"])
    assert plain["flags"] == [False]
    assert checkpointed["flags"] == [False, True], "the block's forward ran again in backward, marked as a rerun"
    assert abs(plain["loss"] - checkpointed["loss"]) <= 1e-6
    assert plain["grads"].keys() == checkpointed["grads"].keys() and len(plain["grads"]) > 0
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(checkpointed["grads"][name], grad, atol=1e-6, rtol=0, msg=name)
    # The same parameter names: checkpoints, LoRA targets and optimizer groups read them.
    assert [n for n, _ in checkpointed["model"].named_parameters()] == [n for n, _ in plain["model"].named_parameters()]


def test_every_nth_block_is_checkpointed_from_the_first(smoke) -> None:
    overrides = [*smoke["llm"], "model.num_layers=4", "trainer.activation_checkpointing=2"]
    model, family = (lambda s: (s["model"], s["family"]))(_step(overrides))
    rerun = [
        name
        for name in family_blocks(family, model, "test")
        if "Checkpointed" in type(model.get_submodule(name)).__name__
    ]
    assert rerun == ["layers.0", "layers.2"]


def test_expert_counts_are_not_doubled_by_the_rerun(smoke) -> None:
    """Modality experts count routed tokens in forward; the rerun in backward must not count again."""
    overrides = [*smoke["mixed_modal"], "plugins=[modality_experts]"]

    def counts(*extra: str) -> tuple[torch.Tensor, torch.Tensor]:
        from jevons.plugins.modality_experts.layer import ModalityExperts

        layers = [m for m in _step([*overrides, *extra])["model"].modules() if isinstance(m, ModalityExperts)]
        assert layers
        return torch.stack([m.counts for m in layers]), torch.stack([m.expert_load for m in layers])

    (plain_counts, plain_load), (rerun_counts, rerun_load) = counts(), counts("trainer.activation_checkpointing=full")
    assert plain_counts.sum() > 0
    torch.testing.assert_close(rerun_counts, plain_counts, atol=0, rtol=0)
    torch.testing.assert_close(rerun_load, plain_load, atol=0, rtol=0)


def test_checkpointed_and_compiled_blocks_train(train, tiny, capsys) -> None:
    """torchtitan's order, checkpointing then compile, on the same blocks."""
    from torch._dynamo.utils import counters

    counters.clear()
    result = train(tiny("trainer.activation_checkpointing=full", "trainer.compile=true", "trainer.max_steps=2"))
    assert counters["stats"]["unique_graphs"] >= 1, "the blocks ran eagerly: nothing was compiled"
    out = capsys.readouterr().out
    assert "trainer.activation_checkpointing: 2 blocks recomputed in backward (layers.0 ... layers.1)" in out
    assert "trainer.compile: 2 blocks compiled in place" in out
    assert result is not None and result.summary["steps"] == 2


@pytest.mark.parametrize("value", ["0", "-1", "some"])
def test_bad_settings_are_refused_at_config_time(value: str, smoke) -> None:
    with pytest.raises(UsageError, match="trainer.activation_checkpointing"):
        compose_config(PluginManager.load(autoload=False), [*smoke["llm"], f"trainer.activation_checkpointing={value}"])
