"""Per-plugin figures in the run summary, each recomputed here by a different route than the plugin's own."""

from __future__ import annotations

import json
from typing import Any

import pytorch_lightning as pl
import torch

from jevons.framework.attribution import collect, format_figures
from jevons.framework.plugin import hookimpl


class _BatchRecorder(pl.Callback):
    """What reached the model: each training batch's loss mask, and wall time around each step."""

    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.masks.append(batch.data["loss_mask"].clone())


class _Recording:
    def __init__(self) -> None:
        self.recorder = _BatchRecorder()

    @hookimpl
    def register_callbacks(self, register, config):
        register(self.recorder)


def test_padding_figures_equal_the_padding_of_the_batches_the_model_saw(train, tiny) -> None:
    recording = _Recording()
    result = train(
        tiny(
            "plugins=[padding_aware_sampling,recording]",
            "model.max_seq_len=128",
            "data.seq_len=128",
            "padding_aware_sampling.max_tokens=1032",
            "padding_aware_sampling.num_buckets=1",
            "padding_aware_sampling.pool_batches=1",
            "trainer.max_steps=6",
        ),
        plugins=[("recording", recording)],
    )
    figures = result.summary["plugin_figures"]["padding_aware_sampling"]
    masks = recording.recorder.masks
    assert len(masks) == 6
    # Lengths count a window's target token too, so positions padded are the comparable quantity.
    assert figures["padded_positions"] == int(sum((m == 0).sum() for m in masks))
    assert figures["padded_positions"] > 0  # one bucket, unsorted pools: short document-end windows pad
    # A window of L tokens is L - 1 inputs predicting L - 1 targets: one length unit more per sample.
    real_lengths = sum(float(m.sum()) + m.shape[0] for m in masks)
    assert figures["mean_real_per_batch"] == round(real_lengths / 6, 1)
    assert 0 < figures["padding_fraction"] < 1
    assert figures["real_length_units_per_s"] > 0
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["plugin_figures"]["padding_aware_sampling"] == figures


def test_muon_figures_count_its_parameters_and_time_only_its_updates(train, tiny) -> None:
    result = train(tiny("plugins=[muon]", "trainer.max_steps=3"))
    figures = result.summary["plugin_figures"]["muon"]
    # Independently: llm hidden matrices are the 2-D weights inside the blocks (not embed, head or norms).
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, tiny("plugins=[muon]"))
    model = manager.family("llm").build_model(config)
    hidden = sum(p.numel() for name, p in model.named_parameters() if name.startswith("layers.") and p.ndim == 2)
    total = sum(p.numel() for p in model.parameters())
    assert figures["muon_params_fraction"] == round(hidden / total, 4)
    assert figures["optimizer_steps"] == 3
    # The update alone is part of a step: a positive share of it, less than all of it.
    assert 0 < figures["optimizer_share_of_train_step"] < 1
    assert figures["optimizer_step_ms"] * 3 / 1e3 < result.summary["time_s"]


def test_cascade_figures_match_the_network_evaluations_a_hook_counts() -> None:
    import time

    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.plugins import lowres_cascade
    from jevons.plugins.lowres_cascade.cascade import CascadeSampler
    from jevons.plugins.lowres_cascade.report import CascadeReport
    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.data import NO_DIGIT
    from jevons.recipes.diffusion.family import DiffusionFamily

    config = compose_config(
        PluginManager.load(autoload=False),
        [
            "recipe=image_lowdiff_tiny",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.head_dim=16",
            "model.ffn_dim=32",
        ],
    )
    model = DiffusionFamily().build_model(config)
    lowres_cascade.modify_model(model, config)
    sizes: list[int] = []
    hook = model.transformer.patch_embedding.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    sampler = CascadeSampler(model, [(8, 3), (16, 2)], guidance=2.0, shift=1.0, condition_noise=0.05)
    labels = Condition(labels=torch.tensor([[4, NO_DIGIT], [7, NO_DIGIT], [1, NO_DIGIT]]))
    started = time.perf_counter()
    for seed in range(2):
        sampler(labels, (1, 1, 16, 16), seed=seed)
    elapsed = time.perf_counter() - started
    hook.remove()

    report = CascadeReport()
    report.sampler = sampler
    figures = report.report()
    assert figures["steps_at_8px"] == sizes.count(8) // 2 and figures["steps_at_16px"] == sizes.count(16) // 2
    assert figures["full_resolution_equivalent_steps"] == 2 + 3 * 0.25
    assert figures["sampling_calls"] == 2
    assert 0 < figures["sampling_s_per_sample"] <= elapsed / 6


def test_a_run_without_reporting_plugins_reports_nothing(train, tiny) -> None:
    result = train(tiny("trainer.max_steps=1", "trainer.val_check_interval=1"))
    assert result.summary["plugin_figures"] == {}


def test_figures_table_and_merge() -> None:
    class Report(pl.Callback):
        plugin = "p"

        def __init__(self, figures: dict[str, Any]) -> None:
            self.figures = figures

        def report(self) -> dict[str, Any]:
            return self.figures

    figures = collect([Report({"a_ms": 1.23456}), pl.Callback(), Report({"b": "text"})])
    assert figures == {"p": {"a_ms": 1.23456, "b": "text"}}
    assert format_figures(figures).splitlines() == [
        "plugin  figure  value",
        "------  ------  -----",
        "p       a_ms    1.235",
        "p       b       text",
    ]
    assert format_figures({}) == ""
