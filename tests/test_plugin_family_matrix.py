"""Every built-in plugin with every family it declares support for: a few real training steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from jevons.framework.plugin_manager import PluginManager, unsupported_reason

# Families whose data a session fixture builds: the fixture's folder becomes data.source.
DATA_FIXTURE = {"speech": "speech_corpus"}

# Per plugin and family, what its section needs at smoke size.
TEACHER = Path(__file__).resolve().parents[1] / "benchmarks" / "teachers" / "image-16px"
PLUGIN_SMOKE = {
    "block_sparse_attention": {
        "diffusion": ["block_sparse_attention.block_size=4", "block_sparse_attention.max_density=0.5"]
    },
    "modality_experts": {"mixed_modal": ["modality_experts.num_experts=[2,2]"]},
    # The student is the committed image teacher's architecture (image_tiny), which it starts from.
    "step_distillation": {
        "diffusion": [
            "model.num_layers=4",
            "model.num_heads=4",
            "model.head_dim=32",
            "model.ffn_dim=256",
            "data.resolution=16",
            f"model.pretrained={TEACHER}",
            "model.pretrained_subfolder=transformer",
            "step_distillation.teacher_steps=4",
            "step_distillation.val_samples=4",
            "sample.fd_samples=0",
        ]
    },
    "lowres_cascade": {"diffusion": ["lowres_cascade.stages=[{res:4,steps:2},{res:8,steps:2}]"]},
    "padding_aware_sampling": {
        "llm": ["padding_aware_sampling.max_tokens=132", "padding_aware_sampling.num_buckets=4"],
        "mixed_modal": ["padding_aware_sampling.max_tokens=360", "padding_aware_sampling.num_buckets=2"],
        "diffusion": ["padding_aware_sampling.max_tokens=4", "padding_aware_sampling.num_buckets=1"],
        "speech": [
            "padding_aware_sampling.dims=2",
            "padding_aware_sampling.max_tokens=1600",
            "padding_aware_sampling.num_buckets=2",
            "padding_aware_sampling.output_buckets=2",
        ],
    },
}

_manager = PluginManager.load(autoload=False)
PAIRS = [
    (plugin, family)
    for plugin in _manager.run_plugins()
    for family in sorted(_manager.families)
    if not unsupported_reason(_manager.info(plugin), _manager.family(family))
]


def test_every_family_has_a_smoke_setting(smoke) -> None:
    assert set(_manager.families) == set(smoke)  # smoke: tests/conftest.py's SMOKE
    assert PAIRS, "no built-in plugin runs on any family"


@pytest.mark.parametrize("plugin, family", PAIRS, ids=[f"{p}-{f}" for p, f in PAIRS])
def test_plugin_trains_with_family(train, run_root, request, smoke, plugin: str, family: str) -> None:
    extra = PLUGIN_SMOKE.get(plugin, {}).get(family, [])
    if family in DATA_FIXTURE:
        extra = [f"data.source={request.getfixturevalue(DATA_FIXTURE[family])}", *extra]
    result = train([*smoke[family], f"plugins=[{plugin}]", *extra, f"run.root={run_root}"])
    assert result.summary["steps"] == 3
    assert result.summary["plugins"] == plugin
    assert result.summary["train_loss"] is not None and result.summary["val_loss"] is not None
    figures = result.summary["plugin_figures"][plugin]  # every built-in plugin says what it did, in numbers
    assert any(isinstance(v, (int, float)) for v in figures.values()), figures


def test_blade_with_lora_trains(train, run_root, smoke) -> None:
    """BLADE's own recipe: LoRA on a frozen base that the teacher and fake score share, the student
    attending block-sparsely (tests/plugins/test_step_distillation.py pins the sharing)."""
    plugins = ("lora", "block_sparse_attention", "step_distillation")
    result = train(
        [
            *smoke["diffusion"],
            f"plugins=[{','.join(plugins)}]",
            "lora.rank=4",
            *PLUGIN_SMOKE["block_sparse_attention"]["diffusion"],
            *PLUGIN_SMOKE["step_distillation"]["diffusion"],
            f"run.root={run_root}",
        ]
    )
    assert result.summary["steps"] == 3 and result.summary["val_loss"] is not None
    assert set(result.summary["plugin_figures"]) >= set(plugins)


# The same plugins on the text-conditioned latent model (recipe wan_t2v_tiny, the session's tiny Wan
# pipeline and precomputed latents; the cascade encodes square pixel clips online).
TEXT_SMOKE = {
    "block_sparse_attention": ["block_sparse_attention.block_size=4", "block_sparse_attention.max_density=0.5"],
    "step_distillation": [
        "step_distillation.steps=2",
        "step_distillation.teacher_steps=4",
        "step_distillation.val_samples=2",
        "step_distillation.guard_per_class=2",
    ],
    "lowres_cascade": [
        "conditioning.online=true",
        "data.resolution=32",
        "data.frames=9",
        "sample.height=32",
        "sample.width=32",
        "lowres_cascade.stages=[{res:16,steps:2},{res:32,steps:2}]",
    ],
    "padding_aware_sampling": ["padding_aware_sampling.max_tokens=72", "padding_aware_sampling.num_buckets=1"],
}
TEXT_PLUGINS = [plugin for plugin, family in PAIRS if family == "diffusion"]


@pytest.mark.parametrize("plugin", TEXT_PLUGINS)
def test_plugin_trains_on_the_text_to_video_recipe(train, run_root, wan_t2v, plugin: str) -> None:
    source = wan_t2v["clips"] if plugin == "lowres_cascade" else wan_t2v["latents"]
    result = train(
        [
            "recipe=wan_t2v_tiny",
            f"model.pretrained={wan_t2v['pipeline']}",
            f"data.source={source}",
            "data.batch_size=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "trainer.progress_bar=false",
            "sample.steps=2",
            f"plugins=[{plugin}]",
            *TEXT_SMOKE.get(plugin, []),
            f"run.root={run_root}",
        ]
    )
    assert result.summary["steps"] == 3 and result.summary["val_loss"] is not None
    assert any(isinstance(v, (int, float)) for v in result.summary["plugin_figures"][plugin].values())


# The llm family's plugins on an imported Hugging Face checkpoint (recipe llama_sft_tiny: the built-in tiny Llama
# folder, GQA and Llama-3 rope, fine-tuned on chat examples). The padding-aware sampler batches the unpacked examples.
IMPORTED_SMOKE = {
    "padding_aware_sampling": [
        "data.packing=false",
        "padding_aware_sampling.max_tokens=2048",
        "padding_aware_sampling.num_buckets=4",
    ],
}
LLM_PLUGINS = [plugin for plugin, family in PAIRS if family == "llm"]


@pytest.mark.parametrize("plugin", LLM_PLUGINS)
def test_plugin_trains_on_an_imported_checkpoint(train, run_root, plugin: str) -> None:
    result = train(
        [
            "recipe=llama_sft_tiny",
            "data.num_workers=0",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "trainer.progress_bar=false",
            "generate.max_new_tokens=4",
            f"plugins=[{plugin}]",
            *IMPORTED_SMOKE.get(plugin, []),
            f"run.root={run_root}",
        ]
    )
    assert result.summary["steps"] == 3 and result.summary["val_loss"] is not None
    assert result.summary["plugin_figures"][plugin], result.summary
    assert any(isinstance(v, (int, float)) for v in result.summary["plugin_figures"][plugin].values())
