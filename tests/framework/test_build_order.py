"""The order of hook and family calls in a run is a contract (docs/build_order.md)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from jevons.framework.plugin import hookimpl
from jevons.recipes.llm.family import LLMFamily


class RecordedLLM(LLMFamily):
    """A third-party family: the llm family, recording what the framework asks of it."""

    name = "recorded_llm"

    def __init__(self, calls: list[str], recipe_dir: Path) -> None:
        self.calls = calls
        self.recipe_dir = recipe_dir

    def build_model(self, config):
        self.calls.append("family.build_model")
        return super().build_model(config)

    def attention_modules(self, model):
        self.calls.append("family.attention_modules")
        return super().attention_modules(model)

    def ffn_modules(self, model):
        self.calls.append("family.ffn_modules")
        return super().ffn_modules(model)

    def default_objective(self, model, config):
        self.calls.append("family.default_objective")
        return super().default_objective(model, config)

    def build_dataset(self, config, split):
        self.calls.append(f"family.build_dataset:{split}")
        return super().build_dataset(config, split)

    def default_generator(self, model, config):
        self.calls.append("family.default_generator")
        return super().default_generator(model, config)

    def evaluate(self, context):
        self.calls.append("family.evaluate")
        return super().evaluate(context)


class Recorder:
    """Implements every hook and records each call; answers None so the defaults are built."""

    def __init__(self, calls: list[str], family: RecordedLLM) -> None:
        self.calls = calls
        self.family = family

    @hookimpl
    def register_recipes(self, register):
        self.calls.append("register_recipes")
        register(self.family)

    @hookimpl
    def register_config(self, register):
        self.calls.append("register_config")

    @hookimpl
    def register_kernels(self, register):
        self.calls.append("register_kernels")

    @hookimpl
    def configure(self, config):
        self.calls.append("configure")

    @hookimpl
    def replace_attention(self, module, name, config):
        self.calls.append(f"replace_attention:{name}")

    @hookimpl
    def replace_ffn(self, module, name, layer_index, config):
        self.calls.append(f"replace_ffn:{name}:{layer_index}")

    @hookimpl
    def modify_model(self, model, config):
        self.calls.append("modify_model")

    @hookimpl
    def make_objective(self, model, config):
        self.calls.append("make_objective")

    @hookimpl
    def make_optimizer(self, model, config):
        self.calls.append("make_optimizer")

    @hookimpl
    def make_batch_sampler(self, dataset, config, stage):
        self.calls.append(f"make_batch_sampler:{stage}")

    @hookimpl
    def make_generator(self, model, config):
        self.calls.append("make_generator")

    @hookimpl
    def register_callbacks(self, register, config):
        self.calls.append("register_callbacks")
        calls = self.calls

        class Fit(pl.Callback):
            def on_fit_start(self, trainer, pl_module):
                calls.append("Trainer.fit")

        register(Fit())


def test_build_order_is_the_documented_contract(train, tiny, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "recorded_tiny.yaml").write_text("family: recorded_llm\ndefaults: [llm_tiny, _self_]\n")
    calls: list[str] = []
    recorder = Recorder(calls, RecordedLLM(calls, recipes))
    overrides = [o for o in tiny("plugins=[recorder]", "trainer.max_steps=2") if not o.startswith("recipe=")]
    train(["recipe=recorded_tiny", *overrides], plugins=[("recorder", recorder)])

    assert calls == [
        # 1. plugins load: every loaded plugin registers
        "register_recipes",
        "register_config",
        "register_kernels",
        # 2. config: enabled plugins check their sections
        "configure",
        # 4. build, in order
        "family.build_model",
        "family.attention_modules",
        "replace_attention:layers.0.attn",
        "replace_attention:layers.1.attn",
        "family.ffn_modules",
        "replace_ffn:layers.0.ffn:0",
        "replace_ffn:layers.1.ffn:1",
        "modify_model",
        "make_objective",
        "family.default_objective",
        "make_optimizer",
        "family.build_dataset:train",
        "family.build_dataset:val",
        "make_batch_sampler:train",
        "make_batch_sampler:val",
        "make_generator",
        "family.default_generator",
        "register_callbacks",
        # 5. the run
        "Trainer.fit",
        "family.evaluate",
    ]


def test_compiled_blocks_train_as_the_eager_model(train, tiny, run_root, capsys) -> None:
    """trainer.compile compiles each block in place: the same parameter names, the same losses (1e-5)."""
    import csv

    common = ["trainer.max_steps=10", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1"]

    def losses(name: str, *extra: str) -> dict[int, float]:
        result = train(tiny(*common, f"run.dir={run_root / name}", *extra))
        with open(result.run_dir / "metrics.csv") as handle:
            return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}

    eager = losses("eager")
    assert "trainer.compile" not in capsys.readouterr().out
    compiled = losses("compiled", "trainer.compile=true")
    assert "trainer.compile: 2 blocks compiled in place (layers.0 ... layers.1)" in capsys.readouterr().out
    assert eager.keys() == compiled.keys() and len(eager) == 10
    assert max(abs(eager[k] - compiled[k]) for k in eager) <= 1e-5
