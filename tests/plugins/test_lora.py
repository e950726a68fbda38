"""The lora plugin: adapters start at the base model, only they train, checkpoints hold only them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from jevons.framework import distributed
from jevons.framework.checkpoint import SafeFileSystemReader
from jevons.framework.checkpoint_dirs import latest_checkpoint
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.inference import load_run
from jevons.framework.plugin_manager import PluginManager
from jevons.plugins.lora.inject import adapter_parameters, add_adapters, default_targets


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


def _model(manager: PluginManager, overrides: list[str]) -> torch.nn.Module:
    """The family's model, built in one process (call inside ``distributed.initialized``)."""
    config = compose_config(manager, overrides)
    torch.manual_seed(0)
    return manager.family(config.family).build_model(config)


def _llm_outputs(model: torch.nn.Module) -> torch.Tensor:
    tokens = torch.randint(0, 200, (3, 16), generator=torch.Generator().manual_seed(1))
    return model(tokens)


def _diffusion_outputs(model: torch.nn.Module) -> torch.Tensor:
    from jevons.recipes.diffusion.conditioning import Condition

    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(3, 1, 1, 8, 8, generator=generator)
    labels = torch.tensor([[1, 10], [4, 10], [7, 10]])
    return model(noisy, torch.tensor([0.2, 0.5, 0.9]), Condition(labels=labels))


CASES = {
    "llm": (["recipe=llm_tiny", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=4"], _llm_outputs),
    "diffusion": (
        ["recipe=image_tiny", "model.num_layers=1", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=32"],
        _diffusion_outputs,
    ),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_adapters_start_as_the_base_model_and_only_they_receive_gradients(manager, family: str) -> None:
    overrides, outputs = CASES[family]
    with distributed.initialized(ParallelConfig()):
        model = _model(manager, overrides)
        before = outputs(model).detach()
        adapted = add_adapters(model, default_targets(family), rank=4, alpha=8, dropout=0.0, seed=0)
        after = outputs(model)
        after.square().mean().backward()
    per_block = len(default_targets(family)) + (4 if family == "diffusion" else 0)  # Wan: to_q/k/v/out twice
    assert len(adapted) == per_block * (2 if family == "llm" else 1)
    assert torch.equal(after.detach(), before)  # B = 0: the adapted model is the base model

    adapters = adapter_parameters(model)
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(adapters)
    assert all(not p.requires_grad for name, p in model.named_parameters() if name not in adapters)
    assert all(adapters[n].grad.abs().sum() > 0 for n in adapters if ".lora_B." in n)  # B learns first
    rank_counts = {p.shape[0] for n, p in adapters.items() if ".lora_A." in n} | {
        p.shape[1] for n, p in adapters.items() if ".lora_B." in n
    }
    assert rank_counts == {4}


def test_the_same_seed_draws_the_same_adapters_and_leaves_the_run_stream_alone(manager) -> None:
    overrides = CASES["llm"][0]
    with distributed.initialized(ParallelConfig()):
        first, second = _model(manager, overrides), _model(manager, overrides)
        torch.manual_seed(5)
        add_adapters(first, ["attn.q"], rank=2, alpha=2, dropout=0.0, seed=3)
        after_first = torch.rand(1)
        torch.manual_seed(5)
        add_adapters(second, ["attn.q"], rank=2, alpha=2, dropout=0.0, seed=3)
        after_second = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after_first, torch.rand(1)) and torch.equal(after_second, after_first)
    a, b = adapter_parameters(first), adapter_parameters(second)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_bad_lora_settings_are_refused_with_what_to_do(manager, train, tiny, run_root) -> None:
    with pytest.raises(UsageError, match=r"lora.rank=0 must be a positive integer"):
        compose_config(manager, [*CASES["llm"][0], "plugins=[lora]", "lora.rank=0"])
    with pytest.raises(
        UsageError, match=r"lora.targets=\['attn.nothing'\] matches no module .* for example: .*gate_up"
    ):
        train(tiny("plugins=[lora]", "lora.targets=[attn.nothing]"))
    with pytest.raises(
        UsageError, match=r"layers.0.attn, layers.1.attn, which are not linear layers \(CausalSelfAttention\)"
    ):
        train(tiny("plugins=[lora]", "lora.targets=[attn]"))
    assert not run_root.exists()


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def test_a_lora_checkpoint_holds_the_adapters_only_and_resumes_exactly(train, tiny, crasher, tmp_path: Path) -> None:
    common = tiny(
        "plugins=[lora]",
        "lora.rank=4",
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=3",
        "optimizer.warmup_steps=0",
        "optimizer.lr=1e-2",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
    )
    straight = train([*common, f"run.dir={tmp_path / 'straight'}"])
    losses = _losses(straight.run_dir)
    assert losses[5] < losses[0]  # the adapters learn
    figures = straight.summary["plugin_figures"]["lora"]
    assert figures["trained_params"] == figures["adapter_params"] > 0

    metadata = SafeFileSystemReader(latest_checkpoint(straight.run_dir / "checkpoints") / "dcp").read_metadata()
    saved = {key: m.size.numel() for key, m in metadata.state_dict_metadata.items() if hasattr(m, "size")}
    weights = {key: n for key, n in saved.items() if key.startswith("model.")}
    assert weights and all(".lora_A." in key or ".lora_B." in key for key in weights)
    assert sum(weights.values()) == figures["adapter_params"]
    moments = sum(n for key, n in saved.items() if key.startswith("optim.") and key.endswith(("exp_avg", "exp_avg_sq")))
    assert moments == 2 * figures["adapter_params"]  # AdamW's two moments, of the adapters only

    with pytest.raises(RuntimeError, match="injected crash at step 4"):
        train([*common, "plugins=[lora,crasher]", f"run.dir={tmp_path / 'resumed'}"], plugins=[crasher(4)])
    resumed = train([*common, f"run.dir={tmp_path / 'resumed'}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 3
    assert _losses(resumed.run_dir) == losses
    with pytest.raises(UsageError, match=r"frozen parameters of this model differ .* the pretrained base"):
        train([*common, f"run.dir={tmp_path / 'resumed'}", "checkpoint.resume=auto", "seed=7", "trainer.max_steps=9"])
    without = [o for o in common if o != "plugins=[lora]"]
    with pytest.raises(
        UsageError, match=r"does not hold \d+ tensor\(s\) this model trains \(model\.model\.embed\.weight"
    ):
        train([*without, f"run.dir={tmp_path / 'resumed'}", "checkpoint.resume=auto", "trainer.max_steps=9"])

    # Loading for sampling or export rebuilds the same seed-made base (else the digest refuses it).
    with distributed.initialized(ParallelConfig()):
        loaded = load_run(straight.run_dir)
    assert set(adapter_parameters(loaded.model)) == {k.removeprefix("model.model.") for k in weights}
