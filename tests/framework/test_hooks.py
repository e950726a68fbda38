"""One test per hook, named ``test_hook_<name>`` (the meta-test checks the names), each on a real run or build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from jevons.framework.config.compose import compose_config
from jevons.framework.errors import PluginError, UsageError
from jevons.framework.family import RecipeDirectory
from jevons.framework.objective import Objective, ObjectiveOutput
from jevons.framework.plugin import PluginInfo, hookimpl
from jevons.framework.plugin_manager import PluginManager
from jevons.kernels import dispatch


def test_hook_register_recipes(tmp_path: Path) -> None:
    (tmp_path / "llm_wide.yaml").write_text("family: llm\ndefaults: [llm_tiny, _self_]\nmodel:\n  hidden_size: 256\n")

    class Recipes:
        @hookimpl
        def register_recipes(self, register):
            register(RecipeDirectory(tmp_path))

    manager = PluginManager.load([("more_recipes", Recipes())], autoload=False)
    assert manager.recipes["llm_wide"].plugin == "more_recipes"
    config = compose_config(manager, ["recipe=llm_wide"])
    assert config.model.hidden_size == 256 and config.trainer.max_steps == 500  # the rest from llm_tiny

    (tmp_path / "llm_tiny.yaml").write_text("family: llm\n")
    with pytest.raises(
        UsageError,
        match="Recipe 'llm_tiny' is registered by both plugin 'jevons.recipes.llm'.* and plugin 'more_recipes'",
    ):
        PluginManager.load([("more_recipes", Recipes())], autoload=False)


@dataclass
class ScaleConfig:
    factor: float = 1.0
    note: str = ""


def test_hook_register_config() -> None:
    class Scale:
        @hookimpl
        def register_config(self, register):
            register("scale", ScaleConfig)

        @hookimpl
        def modify_model(self, model, config):
            pass

    manager = PluginManager.load([("scale", Scale())], autoload=False)
    config = compose_config(manager, ["recipe=llm_tiny", "plugins=[scale]", "scale.factor=2"])
    assert config.scale == ScaleConfig(factor=2.0)
    with pytest.raises(UsageError, match="scale.factor='big' has the wrong type: expected a number"):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[scale]", "scale.factor=big"])

    class Other:
        @hookimpl
        def register_config(self, register):
            register("scale", ScaleConfig)

    with pytest.raises(
        UsageError, match="Config section 'scale' is registered by both plugin 'scale' and plugin 'other'"
    ):
        PluginManager.load([("scale", Scale()), ("other", Other())], autoload=False)


def test_a_plugin_info_config_is_registered_under_the_plugins_own_name() -> None:
    class Scale:
        PLUGIN_INFO = PluginInfo(config=ScaleConfig)

        @hookimpl
        def modify_model(self, model, config):
            pass

    manager = PluginManager.load([("scale", Scale())], autoload=False)
    assert manager.config_sections["scale"].value is ScaleConfig and manager.config_sections["scale"].plugin == "scale"
    assert compose_config(manager, ["recipe=llm_tiny", "plugins=[scale]", "scale.factor=3"]).scale.factor == 3.0

    class Squatter:
        @hookimpl
        def register_config(self, register):
            register("scale", ScaleConfig)

    with pytest.raises(
        UsageError, match="Config section 'scale' is registered by both plugin 'scale' and plugin 'squatter'"
    ):
        PluginManager.load([("scale", Scale()), ("squatter", Squatter())], autoload=False)


def test_hook_register_kernels() -> None:
    class Kernels:
        @hookimpl
        def register_kernels(self, register):
            register("test_double", "reference", lambda: lambda x: 2 * x, priority=0)
            register("test_double", "fast", lambda: lambda x: x + x, priority=10)
            register("test_double", "gpu_only", lambda: lambda x: x, priority=100, available=lambda: False)

    PluginManager.load([("kernels_under_test", Kernels())], autoload=False)
    dispatch.force({})
    assert dispatch.choose("test_double").name == "fast"  # best available: gpu_only is unavailable
    assert dispatch.get("test_double")(torch.tensor(3.0)).item() == 6.0
    dispatch.force({"test_double": "reference"})
    assert dispatch.choose("test_double").name == "reference"
    with pytest.raises(UsageError, match="kernels.test_double='fsat': no such implementation. Did you mean 'fast'"):
        dispatch.force({"test_double": "fsat"})
    dispatch.force({})


def test_hook_configure() -> None:
    seen = []

    class Filler:
        @hookimpl
        def register_config(self, register):
            register("filler", ScaleConfig)

        @hookimpl
        def configure(self, config):
            seen.append(config.recipe)
            if config.filler.factor < 0:
                raise UsageError("filler.factor must not be negative")
            config.filler.note = f"derived from hidden_size={config.model.hidden_size}"

    manager = PluginManager.load([("filler", Filler())], autoload=False)
    compose_config(manager, ["recipe=llm_tiny"])
    assert seen == []  # not enabled: never configured
    config = compose_config(manager, ["recipe=llm_tiny", "plugins=[filler]"])
    assert config.filler.note == "derived from hidden_size=128" and seen == ["llm_tiny"]
    with pytest.raises(UsageError, match="filler.factor must not be negative"):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[filler]", "filler.factor=-1"])


class ScaledAttention(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.inner(x)


def test_hook_replace_attention(train, tiny) -> None:
    asked = []

    class Replace:
        @hookimpl
        def replace_attention(self, module, name, config):
            asked.append(name)
            return ScaledAttention(module)

    result = train(tiny("plugins=[replacer]", "trainer.max_steps=2"), plugins=[("replacer", Replace())])
    assert asked == ["layers.0.attn", "layers.1.attn"]
    config_yaml = (result.run_dir / "config.yaml").read_text()
    assert "replacer" in config_yaml

    class Rival:
        @hookimpl
        def replace_attention(self, module, name, config):
            return ScaledAttention(module)

    with pytest.raises(UsageError, match="Plugins 'replacer' and 'rival' both replace module 'layers.0.attn'"):
        train(tiny("plugins=[replacer,rival]"), plugins=[("replacer", Replace()), ("rival", Rival())])


def test_hook_replace_ffn(train, tiny) -> None:
    layers = []

    class ZeroFFN:
        @hookimpl
        def replace_ffn(self, module, name, layer_index, config):
            layers.append((name, layer_index, type(module).__name__))
            return torch.nn.Identity() if layer_index == 1 else None

    class Check(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            types.extend(type(layer.ffn).__name__ for layer in pl_module.model.layers)

    types: list[str] = []

    class Probe:
        @hookimpl
        def register_callbacks(self, register, config):
            register(Check())

    train(
        tiny("plugins=[zero_ffn,probe]", "trainer.max_steps=1"), plugins=[("zero_ffn", ZeroFFN()), ("probe", Probe())]
    )
    assert layers == [("layers.0.ffn", 0, "SwiGLU"), ("layers.1.ffn", 1, "SwiGLU")]
    assert types == ["SwiGLU", "Identity"]


def test_hook_modify_model(train, tiny) -> None:
    class Freeze:
        @hookimpl
        def modify_model(self, model, config):
            model.embed.weight.requires_grad_(False)
            self.before = model.embed.weight.detach().clone()
            self.model = model

    freeze = Freeze()
    train(tiny("plugins=[freeze]", "trainer.max_steps=3"), plugins=[("freeze", freeze)])
    assert torch.equal(freeze.model.embed.weight, freeze.before)
    assert not torch.equal(freeze.model.layers[0].attn.q.weight, torch.zeros(1))


class SmoothedCrossEntropy(Objective):
    """Label-smoothed next-token loss, computed on gathered logits (TP=1 here)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, model, batch):
        self.calls += 1
        logits = model(batch["input_ids"]).float()
        mask = batch["loss_mask"]
        per_token = F.cross_entropy(
            logits.flatten(0, 1), batch["targets"].flatten(), reduction="none", label_smoothing=0.1
        )
        tokens = mask.sum()
        return ObjectiveOutput((per_token * mask.flatten()).sum() / tokens, int(tokens))


def test_hook_make_objective(train, tiny) -> None:
    objective = SmoothedCrossEntropy()

    class Smooth:
        @hookimpl
        def make_objective(self, model, config):
            return objective

    result = train(
        tiny("plugins=[smooth]", "trainer.max_steps=2", "trainer.limit_val_batches=1"), plugins=[("smooth", Smooth())]
    )
    assert objective.calls == 2 + 1  # two training steps, then one validation batch at step 2
    assert result.summary["train_loss"] is not None


def test_hook_make_optimizer(train, tiny) -> None:
    made = {}

    class Sgd:
        @hookimpl
        def make_optimizer(self, model, config):
            made["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            return made["optimizer"]

    class Probe(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            made["used"] = trainer.optimizers[0]
            made["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    class Watch:
        @hookimpl
        def register_callbacks(self, register, config):
            register(Probe())

    train(
        tiny("plugins=[sgd,watch]", "trainer.max_steps=3", "optimizer.warmup_steps=0", "optimizer.min_lr_ratio=0.5"),
        plugins=[("sgd", Sgd()), ("watch", Watch())],
    )
    assert made["used"] is made["optimizer"]
    assert made["lr"] == pytest.approx(
        0.05 * 0.5
    )  # the configured cosine schedule was attached, ending at min_lr_ratio

    class Adam:
        @hookimpl
        def make_optimizer(self, model, config):
            return torch.optim.Adam(model.parameters())

    with pytest.raises(UsageError, match="Plugins 'sgd' and 'adam' both answer 'make_optimizer'"):
        train(tiny("plugins=[sgd,adam]"), plugins=[("sgd", Sgd()), ("adam", Adam())])

    class LowerLr:
        @hookimpl(wrapper=True)
        def make_optimizer(self, model, config):
            optimizer = yield
            for group in optimizer.param_groups:
                group["lr"] /= 10
            return optimizer

    train(
        tiny(
            "plugins=[sgd,lower,watch]",
            "trainer.max_steps=1",
            "optimizer.warmup_steps=0",
            "optimizer.schedule=constant",
        ),
        plugins=[("sgd", Sgd()), ("lower", LowerLr()), ("watch", Watch())],
    )
    assert made["lr"] == pytest.approx(0.005)


class Sequential(torch.utils.data.Sampler):
    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch, self.seen = n, batch, []

    def __len__(self) -> int:
        return self.n // self.batch

    def __iter__(self):
        for start in range(0, len(self) * self.batch, self.batch):
            self.seen.append(list(range(start, start + self.batch)))
            yield self.seen[-1]

    def resume(self, epoch: int, position: int) -> None:
        raise AssertionError("not resumed in this test")


def test_hook_make_batch_sampler(train, tiny) -> None:
    samplers = {}

    class InOrder:
        @hookimpl
        def make_batch_sampler(self, dataset, config, stage):
            samplers[stage] = Sequential(len(dataset), 3 if stage == "train" else 5)
            assert len(dataset.lengths) == len(dataset)
            return samplers[stage]

    train(
        tiny("plugins=[in_order]", "trainer.max_steps=2", "trainer.limit_val_batches=1"),
        plugins=[("in_order", InOrder())],
    )
    assert samplers["train"].seen[:2] == [[0, 1, 2], [3, 4, 5]]
    assert samplers["val"].seen[0] == [0, 1, 2, 3, 4]


def test_hook_make_generator(train, tiny) -> None:
    class Canned:
        def __init__(self) -> None:
            self.calls = []

        def __call__(self, prompts, **kwargs):
            self.calls.append(kwargs["seed"])
            return [f"{p} => canned" for p in prompts]

    canned = Canned()

    class Generator:
        @hookimpl
        def make_generator(self, model, config):
            return canned

    result = train(tiny("plugins=[gen]", "trainer.max_steps=2"), plugins=[("gen", Generator())])
    assert canned.calls == [2]  # one validation, at step 2, seeded by the step
    sample = (result.run_dir / "samples" / "step_00000002.txt").read_text()
    assert 'The "assert" statement => canned' in sample


def test_hook_register_callbacks(train, tiny) -> None:
    class Counter(pl.Callback):
        def __init__(self) -> None:
            self.batches = 0

        def on_train_batch_end(self, *args):
            self.batches += 1

    counter = Counter()

    class Count:
        @hookimpl
        def register_callbacks(self, register, config):
            register(counter)

    train(tiny("plugins=[count]", "trainer.max_steps=3"), plugins=[("count", Count())])
    assert counter.batches == 3

    class Wrong:
        @hookimpl
        def register_callbacks(self, register, config):
            register(object())

    with pytest.raises(UsageError, match="register_callbacks got object, expected a pytorch_lightning.Callback"):
        train(tiny("plugins=[wrong]"), plugins=[("wrong", Wrong())])


def test_a_raising_hook_names_plugin_and_hook(train, tiny, run_root) -> None:
    class Broken:
        @hookimpl
        def make_optimizer(self, model, config):
            raise RuntimeError("boom")

    with pytest.raises(PluginError) as error:
        train(tiny("plugins=[broken]"), plugins=[("broken", Broken())])
    assert "plugin 'broken' failed in hook 'make_optimizer': RuntimeError: boom" in str(error.value)
    assert not run_root.exists()  # nothing written


def test_declared_families_and_conflicts_are_checked_at_config_time() -> None:
    class VideoOnly:
        PLUGIN_INFO = PluginInfo(families=("diffusion",))

        @hookimpl
        def modify_model(self, model, config):
            pass

    class Needy:
        PLUGIN_INFO = PluginInfo(capabilities=("attention_processors",))

        @hookimpl
        def modify_model(self, model, config):
            pass

    class Jealous:
        PLUGIN_INFO = PluginInfo(conflicts=("plain",))

        @hookimpl
        def modify_model(self, model, config):
            pass

    class Plain:
        @hookimpl
        def modify_model(self, model, config):
            pass

    plugins = [("video_only", VideoOnly()), ("needy", Needy()), ("jealous", Jealous()), ("plain", Plain())]
    manager = PluginManager.load(plugins, autoload=False)
    with pytest.raises(
        UsageError, match="Plugin 'video_only' does not support recipe family 'llm': it supports only diffusion"
    ):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[video_only]"])
    with pytest.raises(UsageError, match="the family's model lacks attention_processors"):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[needy]"])
    with pytest.raises(UsageError, match="Plugins 'jealous' and 'plain' cannot run together"):
        compose_config(manager, ["recipe=llm_tiny", "plugins=[plain,jealous]"])
    assert compose_config(manager, ["recipe=llm_tiny", "plugins=[plain]"]).plugins == ["plain"]


def test_trace_hooks_prints_every_call(train, tiny, capsys, monkeypatch) -> None:
    monkeypatch.setenv("JEVONS_TRACE_HOOKS", "1")

    class Quiet:
        @hookimpl
        def modify_model(self, model, config):
            pass

    train(tiny("plugins=[quiet]", "trainer.max_steps=1", "trainer.limit_val_batches=0"), plugins=[("quiet", Quiet())])
    err = capsys.readouterr().err
    assert "jevons: hook register_recipes -> jevons.recipes.llm" in err
    assert "jevons: hook modify_model -> quiet" in err


# -- the rules of docs/hooks.md, one test each ------------------------------------------------


def test_a_misspelt_hook_is_refused_naming_the_plugin_and_the_hook_it_meant() -> None:
    class Typo:
        @hookimpl
        def make_optimiser(self, model, config):
            return None

    with pytest.raises(
        UsageError,
        match="Plugin 'typo' implements 'make_optimiser', which is not a Jevons hook. Did you mean 'make_optimizer'",
    ):
        PluginManager.load([("typo", Typo())], autoload=False)


def test_a_hook_with_arguments_the_hook_lacks_is_refused_naming_the_plugin() -> None:
    class WrongArguments:
        @hookimpl
        def modify_model(self, model, cfg):
            pass

    with pytest.raises(
        UsageError,
        match=r"Plugin 'wrong_arguments' cannot be loaded: hookimpl definition: modify_model\(model, cfg\); Argument\(s\) {'cfg'}",
    ):
        PluginManager.load([("wrong_arguments", WrongArguments())], autoload=False)


def test_load_time_hooks_run_on_every_loaded_plugin_and_run_hooks_only_on_enabled_ones(tmp_path: Path) -> None:
    (tmp_path / "llm_other.yaml").write_text("family: llm\ndefaults: [llm_tiny, _self_]\n")
    calls: list[str] = []

    class Quiet:
        @hookimpl
        def register_recipes(self, register):
            calls.append("register_recipes")
            register(RecipeDirectory(tmp_path))

        @hookimpl
        def configure(self, config):
            calls.append("configure")

    manager = PluginManager.load([("quiet", Quiet())], autoload=False)
    assert calls == ["register_recipes"] and "llm_other" in manager.recipes  # loaded, not enabled
    compose_config(manager, ["recipe=llm_other"])
    assert calls == ["register_recipes"]
    compose_config(manager, ["recipe=llm_other", "plugins=[quiet]"])
    assert calls == ["register_recipes", "configure"]


def test_a_wrapper_on_modify_model_sees_the_other_plugins_changes_and_its_own_take_effect(train, tiny) -> None:
    seen = {}

    class Freeze:
        @hookimpl
        def modify_model(self, model, config):
            model.embed.weight.requires_grad_(False)

    class FreezeNormsToo:
        @hookimpl(wrapper=True)
        def modify_model(self, model, config):
            seen["before_inner"] = model.embed.weight.requires_grad
            result = yield
            seen["after_inner"] = model.embed.weight.requires_grad
            model.norm.weight.requires_grad_(False)
            seen["norm"] = model.norm.weight.detach().clone()
            seen["model"] = model
            return result

    train(
        tiny("plugins=[freeze,freeze_norms]", "trainer.max_steps=2", "trainer.limit_val_batches=0"),
        plugins=[("freeze", Freeze()), ("freeze_norms", FreezeNormsToo())],
    )
    assert seen["before_inner"] is True and seen["after_inner"] is False
    model = seen["model"]
    assert not model.norm.weight.requires_grad and torch.equal(model.norm.weight, seen["norm"])


def test_a_wrapper_on_register_callbacks_takes_effect_and_reports_are_named_by_registration(train, tiny) -> None:
    class Counter(pl.Callback):
        def __init__(self) -> None:
            self.batches = 0

        def on_train_batch_end(self, *args):
            self.batches += 1

        def report(self) -> dict[str, int]:
            return {"batches": self.batches}

    inner, outer = Counter(), Counter()
    order: list[str] = []

    class Inner:
        @hookimpl
        def register_callbacks(self, register, config):
            order.append("inner")
            register(inner)

    class Outer:
        @hookimpl(wrapper=True)
        def register_callbacks(self, register, config):
            result = yield
            order.append("outer, after inner")
            register(outer)
            return result

    result = train(
        tiny("plugins=[inner,outer]", "trainer.max_steps=3", "trainer.limit_val_batches=0"),
        plugins=[("inner", Inner()), ("outer", Outer())],
    )
    assert order == ["inner", "outer, after inner"]
    assert inner.batches == outer.batches == 3
    assert (inner.plugin, outer.plugin) == ("inner", "outer")
    assert result.summary["plugin_figures"] == {"inner": {"batches": 3}, "outer": {"batches": 3}}


def test_a_plugin_that_is_not_enabled_never_runs_even_under_another_function_name() -> None:
    ran: list[str] = []

    class Renamed:
        @hookimpl(specname="configure")
        def check_my_section(self, config):
            ran.append("renamed")

    class Plain:
        @hookimpl
        def configure(self, config):
            ran.append("plain")

    manager = PluginManager.load([("renamed", Renamed()), ("plain", Plain())], autoload=False)
    compose_config(manager, ["recipe=llm_tiny", "plugins=[plain]"])
    assert ran == ["plain"]


def test_one_pluggy_call_runs_the_plugin_registered_last_first() -> None:
    order: list[str] = []

    def plugin(name: str) -> object:
        class Ordered:
            @hookimpl
            def configure(self, config):
                order.append(name)

        return Ordered()

    manager = PluginManager.load([("first", plugin("first")), ("second", plugin("second"))], autoload=False)
    compose_config(manager, ["recipe=llm_tiny", "plugins=[first,second]"])
    assert order == ["second", "first"]  # pluggy's order, as documented in docs/hooks.md


def test_callbacks_of_two_instances_of_one_plugin_class_are_credited_to_each() -> None:
    from jevons.framework.build import plugin_callbacks

    class Report(pl.Callback):
        def report(self) -> dict[str, int]:
            return {}

    class Reporting:
        @hookimpl
        def register_callbacks(self, register, config):
            register(Report())

    manager = PluginManager.load([("one", Reporting()), ("two", Reporting())], autoload=False)
    config = compose_config(manager, ["recipe=llm_tiny", "plugins=[one,two]"])
    assert [callback.plugin for callback in plugin_callbacks(manager, config)] == ["one", "two"]


def test_a_wrapper_alone_on_replace_attention_answers_and_a_failing_wrapper_is_blamed(train, tiny) -> None:
    class HalveAll:
        @hookimpl(wrapper=True)
        def replace_attention(self, module, name, config):
            answers = yield
            return answers or [ScaledAttention(module)]

    from jevons.framework import distributed
    from jevons.framework.build import build_model_and_objective

    manager = PluginManager.load([("halve", HalveAll())], autoload=False)
    config = compose_config(manager, [*tiny("plugins=[halve]")])
    with distributed.initialized(config.parallel):
        model, _, replaced = build_model_and_objective(manager, manager.family(config.family), config)
    assert replaced == {"layers.0.attn": "halve", "layers.1.attn": "halve"}
    assert isinstance(model.get_submodule("layers.1.attn"), ScaledAttention)

    class Answer:
        @hookimpl
        def replace_attention(self, module, name, config):
            return None

    class BrokenWrapper:
        @hookimpl(wrapper=True)
        def replace_attention(self, module, name, config):
            yield
            raise RuntimeError("wrapper broke")

    with pytest.raises(PluginError, match="plugin 'broken_wrapper' failed in hook 'replace_attention'"):
        train(
            tiny("plugins=[answer,broken_wrapper]"), plugins=[("answer", Answer()), ("broken_wrapper", BrokenWrapper())]
        )
