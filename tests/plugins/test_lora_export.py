"""A LoRA run leaves Jevons as files the ecosystem loads: the adapter alone (peft, diffusers) and merged weights.

Each round trip loads the export with the other library and compares its outputs to the Jevons run's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jevons.framework import distributed
from jevons.framework.cli.jevons import main as jevons
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.inference import load_run

TEACHER = Path(__file__).resolve().parents[2] / "benchmarks" / "teachers" / "image-16px"
LLM = [
    "recipe=llama_sft_tiny",
    "data.num_workers=0",
    "data.seq_len=128",
    "data.batch_size=2",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.progress_bar=false",
    "generate.max_new_tokens=2",
]
IMAGE = [
    "recipe=image_tiny",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.head_dim=32",
    "model.ffn_dim=256",
    "data.resolution=16",
    "data.batch_size=4",
    "data.num_workers=0",
    f"model.pretrained={TEACHER}",
    "model.pretrained_subfolder=transformer",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "sample.fd_samples=0",
    "sample.steps=2",
    "trainer.progress_bar=false",
]
TRAINED = ["plugins=[lora]", "lora.rank=4", "lora.alpha=8", "optimizer.lr=2e-2", "optimizer.warmup_steps=0"]


def _built(overrides: list[str]) -> torch.nn.Module:
    """The model a run with these overrides starts training from."""
    from jevons.framework.build import build_model_and_objective
    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager

    manager = PluginManager.load(autoload=False)
    config = compose_config(manager, overrides)
    with distributed.initialized(ParallelConfig()):
        distributed.seed_processes(config.seed)
        return build_model_and_objective(manager, manager.family(config.family), config)[0]


def _loaded(run_dir: Path) -> Any:
    with distributed.initialized(ParallelConfig()):
        return load_run(run_dir)


def test_an_llm_adapter_loads_in_peft_and_merged_weights_in_transformers(train, run_root: Path, tmp_path) -> None:
    import transformers
    from peft import PeftModel

    result = train([*LLM, *TRAINED, f"run.root={run_root}"])
    run = _loaded(result.run_dir)
    model, base = run.model, Path(run.config.model.pretrained)
    assert jevons(["export", f"run_dir={result.run_dir}", "adapter=true", f"out={tmp_path / 'adapter'}"]) == 0
    assert jevons(["export", f"run_dir={result.run_dir}", f"out={tmp_path / 'merged'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    ids = torch.randint(0, 200, (3, 24), generator=torch.Generator().manual_seed(0))
    with distributed.initialized(ParallelConfig()), torch.no_grad():
        ours = model(ids)[..., :200].float()
        with _adapters_off(model):
            base_logits = model(ids)[..., :200].float()
    effect = (ours - base_logits).abs().max()
    assert effect > 1e-3  # the adapters were trained: the checks below can fail

    # A new run can start from the exported adapter: step 0 computes what the trained run does.
    started = _built([*LLM, *TRAINED, f"lora.init_from={tmp_path / 'adapter'}"])
    with distributed.initialized(ParallelConfig()), torch.no_grad():
        assert (started(ids)[..., :200] - ours).abs().max() < 1e-5

    plain = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (adapted(ids).logits[..., :200] - ours).abs().max() < 1e-4
        # The merged export keeps the release's dtype (bfloat16): its rounding, not the adapters, is what is left.
        assert (merged(ids).logits[..., :200] - ours).abs().max() < 0.01 * effect


class _adapters_off:
    """peft's adapter switch over every adapter layer of a model that is not a PeftModel."""

    def __init__(self, model: torch.nn.Module) -> None:
        from jevons.framework.adapters import adapter_layers

        self.layers = [layer for _, layer in adapter_layers(model)]

    def __enter__(self) -> None:
        for layer in self.layers:
            layer.enable_adapters(False)

    def __exit__(self, *exc: object) -> None:
        for layer in self.layers:
            layer.enable_adapters(True)


def test_a_diffusion_adapter_loads_in_diffusers_and_merged_weights_as_a_transformer(train, run_root, tmp_path) -> None:
    from diffusers import WanPipeline, WanTransformer3DModel

    from jevons.recipes.diffusion.conditioning import Condition
    from jevons.recipes.diffusion.model import DiffusionModel

    result = train([*IMAGE, *TRAINED, f"run.root={run_root}"])
    assert jevons(["export", f"run_dir={result.run_dir}", "adapter=true", f"out={tmp_path / 'adapter'}"]) == 0
    assert jevons(["export", f"run_dir={result.run_dir}", f"out={tmp_path / 'merged'}"]) == 0
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["pytorch_lora_weights.safetensors"]

    run = _loaded(result.run_dir)
    model = run.model
    generator = torch.Generator().manual_seed(0)
    noisy, sigma = torch.randn(3, 1, 1, 16, 16, generator=generator), torch.tensor([0.3, 0.6, 0.9])
    hidden = model.conditioner(Condition(labels=torch.tensor([[1, 10], [5, 10], [8, 10]])))
    with torch.no_grad():
        ours = model.transformer(noisy, sigma * 1000, hidden, return_dict=False)[0]
        with _adapters_off(model):
            base = model.transformer(noisy, sigma * 1000, hidden, return_dict=False)[0]
    assert (ours - base).abs().max() > 1e-4

    started = _built([*IMAGE, *TRAINED, f"lora.init_from={tmp_path / 'adapter'}"])
    with torch.no_grad():
        assert (started.transformer(noisy, sigma * 1000, hidden, return_dict=False)[0] - ours).abs().max() < 1e-5

    # A pipeline around the base transformer (the class-conditional testbed has no text encoder or VAE to give it).
    base_transformer = WanTransformer3DModel.from_pretrained(TEACHER / "transformer")
    pipeline = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=base_transformer)
    pipeline.load_lora_weights(str(tmp_path / "adapter"))
    theirs = pipeline.transformer.eval()
    merged = DiffusionModel.from_pretrained(
        tmp_path / "merged", tokens=run.config.conditioning.tokens
    ).transformer.eval()
    with torch.no_grad():
        for transformer in (theirs, merged):
            assert (transformer(noisy, sigma * 1000, hidden, return_dict=False)[0] - ours).abs().max() < 1e-4


def test_exporting_an_adapter_from_a_run_without_one_is_refused(train, tiny, tmp_path, capsys) -> None:
    result = train(tiny("trainer.max_steps=1", "trainer.limit_val_batches=0"))
    assert jevons(["export", f"run_dir={result.run_dir}", "adapter=true", f"out={tmp_path / 'a'}"]) != 0
    assert "was trained without adapters (plugins=[lora]); export it without adapter=." in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
