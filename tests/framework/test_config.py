"""Composition with Hydra's grammar, then typed validation with messages that say how to fix things."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from jevons.framework.config.compose import compose_config
from jevons.framework.config.validate import to_dataclass
from jevons.framework.errors import UsageError
from jevons.framework.plugin import hookimpl
from jevons.framework.plugin_manager import PluginManager


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


def test_recipe_values_override_framework_defaults_and_overrides_win(manager: PluginManager) -> None:
    config = compose_config(manager, ["recipe=llm_tiny", "trainer.max_steps=20", "optimizer.lr=0.01"])
    assert config.recipe == "llm_tiny" and config.family == "llm"
    assert config.trainer.max_steps == 20  # override beats the recipe's 500
    assert config.trainer.val_check_interval == 250  # from the recipe
    assert config.trainer.gradient_clip_val == 1.0  # framework default the recipe does not set
    assert config.optimizer.lr == 0.01 and isinstance(config.optimizer.lr, float)
    assert config.model.hidden_size == 128 and config.data.seq_len == 128  # family sections, typed
    assert config.launcher.name == "local" and config.launcher.nproc == 1


def test_hydra_add_and_delete_grammar(manager: PluginManager) -> None:
    config = compose_config(manager, ["recipe=llm_tiny", "~trainer.gradient_clip_val"])
    assert config.trainer.gradient_clip_val == 1.0  # deleted from the recipe layer, default remains
    with pytest.raises(UsageError, match="Unknown key 'model.extra'"):
        compose_config(manager, ["recipe=llm_tiny", "+model.extra=1"])


def test_unknown_key_suggests_the_closest(manager: PluginManager) -> None:
    with pytest.raises(UsageError) as error:
        compose_config(manager, ["recipe=llm_tiny", "trainer.max_step=10"])
    message = str(error.value)
    assert "Unknown key 'trainer.max_step'" in message
    assert "Did you mean 'trainer.max_steps'?" in message
    assert "val_check_interval" in message  # the valid keys are listed


def test_wrong_type_names_key_and_expected_type(manager: PluginManager) -> None:
    with pytest.raises(UsageError, match=r"trainer.max_steps='abc' has the wrong type: expected an integer, got str"):
        compose_config(manager, ["recipe=llm_tiny", "trainer.max_steps=abc"])
    with pytest.raises(UsageError, match=r"trainer.precision='fp8' is not one of"):
        compose_config(manager, ["recipe=llm_tiny", "trainer.precision=fp8"])
    with pytest.raises(UsageError, match=r"optimizer.lr=-1.0 is not valid: expected a positive number"):
        compose_config(manager, ["recipe=llm_tiny", "optimizer.lr=-1.0"])
    with pytest.raises(UsageError, match="trainer must be a mapping"):
        compose_config(manager, ["recipe=llm_tiny", "trainer=3"])


def test_unknown_recipe_lists_recipes_and_suggests(manager: PluginManager) -> None:
    with pytest.raises(UsageError) as error:
        compose_config(manager, ["recipe=llm_tyni"])
    assert "Unknown recipe 'llm_tyni'. Did you mean 'llm_tiny'?" in str(error.value)
    assert "llm_125m" in str(error.value)
    with pytest.raises(UsageError, match="No recipe given"):
        compose_config(manager, ["trainer.max_steps=3"])


@dataclass
class Section:
    strength: float = 1.0


def test_unknown_plugin_lists_installed_plugins() -> None:
    class Plugin:
        @hookimpl
        def register_config(self, register):
            register("shiny", Section)

        @hookimpl
        def modify_model(self, model, config):
            pass

    manager = PluginManager.load([("shiny", Plugin())], autoload=False)
    with pytest.raises(UsageError) as error:
        compose_config(manager, ["recipe=llm_tiny", "plugins=[nosuch]"])
    assert "Unknown plugin 'nosuch' in plugins" in str(error.value)
    installed = str(error.value).split("Installed plugins: ")[1].rstrip(".").split(", ")
    assert "shiny" in installed and "muon" in installed  # third party and built-in alike
    assert installed == sorted(installed)
    # A disabled plugin's section is still checked, then left out of the run.
    with pytest.raises(UsageError, match="Did you mean 'shiny.strength'"):
        compose_config(manager, ["recipe=llm_tiny", "+shiny.strenght=2"])
    config = compose_config(manager, ["recipe=llm_tiny", "plugins=[shiny]", "shiny.strength=3"])
    assert config.shiny.strength == 3.0
    assert not hasattr(compose_config(manager, ["recipe=llm_tiny"]), "shiny")


@dataclass
class Inner:
    ratio: float = 0.5


@dataclass
class Outer:
    mode: Literal["a", "b"] = "a"
    size: int | None = None
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_validation_of_nested_types() -> None:
    built = to_dataclass(Outer, {"mode": "b", "size": 3, "names": ["x"], "inner": {"ratio": 1}}, "outer")
    assert built.inner.ratio == 1.0 and isinstance(built.inner.ratio, float)
    assert to_dataclass(Outer, {"size": None}, "outer").size is None
    with pytest.raises(UsageError, match=r"outer.size=True has the wrong type"):
        to_dataclass(Outer, {"size": True}, "outer")  # a bool is not an int here
    with pytest.raises(UsageError, match=r"outer.names\[1\]=2 has the wrong type: expected a string"):
        to_dataclass(Outer, {"names": ["x", 2]}, "outer")
    with pytest.raises(UsageError, match=r"Did you mean 'outer.inner.ratio'"):
        to_dataclass(Outer, {"inner": {"ration": 1}}, "outer")
