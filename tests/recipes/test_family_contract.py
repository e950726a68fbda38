"""What every built-in family shares: a typed config class, the heads/TP check, the SwiGLU width, datasets."""

from __future__ import annotations

import dataclasses
import math

import pytest

from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import Config
from jevons.framework.data.reader import ShardBackedDataset
from jevons.framework.errors import UsageError
from jevons.framework.family import Family, FamilyBase
from jevons.framework.plugin_manager import PluginManager
from jevons.framework.protocols import MapDataset
from jevons.recipes.llm.family import LLMConfig, LLMFamily, LLMModelConfig
from jevons.recipes.llm.model import TransformerShape
from jevons.recipes.llm.shape import TransformerShapeConfig, check_heads, swiglu_width
from jevons.recipes.mixed_modal.family import MixedModalModelConfig


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


def test_every_recipe_composes_to_an_instance_of_its_familys_config_class(manager: PluginManager, wan_t2v) -> None:
    # The text-to-video recipes need a pipeline folder and captioned data (the session's tiny ones).
    needs_files = {
        "wan_t2v_tiny": [f"model.pretrained={wan_t2v['pipeline']}", f"data.source={wan_t2v['latents']}"],
        "wan2_1_t2v_1_3b": [f"model.pretrained={wan_t2v['pipeline']}", f"data.source={wan_t2v['latents']}"],
    }
    for name, recipe in sorted(manager.recipes.items()):
        family = manager.family(recipe.family)
        assert isinstance(family, Family) and isinstance(family, FamilyBase)
        assert dataclasses.is_dataclass(family.config_class) and issubclass(family.config_class, Config)
        overrides = [f"recipe={name}", "plugins=[]", *needs_files.get(name, [])]  # some plugins need files too
        config = compose_config(manager, overrides)
        assert isinstance(config, family.config_class), name
    config = compose_config(manager, ["recipe=llm_tiny", "plugins=[muon]"])
    assert isinstance(config, LLMConfig) and isinstance(config.model, LLMModelConfig)
    assert config.muon is not None  # the enabled plugin's section is added to the family's class


def test_shared_transformer_shape_keys() -> None:
    shared = [f.name for f in dataclasses.fields(TransformerShapeConfig)]
    assert [f.name for f in dataclasses.fields(MixedModalModelConfig)] == shared
    assert [f.name for f in dataclasses.fields(LLMModelConfig)] == [*shared, "vocab_size", "pretrained"]
    assert LLMModelConfig().max_seq_len == 256 and MixedModalModelConfig().max_seq_len == 96
    shape = LLMModelConfig(hidden_size=96, num_heads=3).resolve(vocab_size=640)
    assert isinstance(shape, TransformerShape)
    assert (shape.vocab_size, shape.ffn_hidden_size, shape.head_dim) == (640, 256, 32)
    assert LLMModelConfig(ffn_hidden_size=100).resolve(vocab_size=128).ffn_hidden_size == 100
    with pytest.raises(TypeError):
        TransformerShape(vocab_size=128)  # type: ignore[call-arg]  # the FFN width must be resolved


def test_swiglu_width_is_llamas_sizing() -> None:
    for hidden in (32, 64, 100, 128, 768, 4096):
        assert swiglu_width(hidden) == 32 * math.ceil(8 * hidden / 3 / 32)
    assert swiglu_width(128) == 352


def test_check_heads_messages() -> None:
    check_heads(LLMModelConfig(hidden_size=128, num_heads=4), 4)
    with pytest.raises(UsageError, match=r"model.hidden_size=130 must be a multiple of model.num_heads=4"):
        check_heads(LLMModelConfig(hidden_size=130, num_heads=4))
    with pytest.raises(UsageError, match=r"parallel.tensor=3 must divide model.num_heads=4: .* among \[1, 2, 4\]"):
        check_heads(MixedModalModelConfig(num_heads=4), 3)
    with pytest.raises(UsageError, match=r"parallel.tensor=2 must divide model.ffn_hidden_size=33"):
        check_heads(LLMModelConfig(ffn_hidden_size=33), 2)
    check_heads(LLMModelConfig(num_heads=8, num_kv_heads=2, hidden_size=64), 2)  # grouped-query: whole groups
    with pytest.raises(UsageError, match=r"parallel.tensor=4 must divide model.num_kv_heads=2: .* among \[1, 2\]"):
        check_heads(LLMModelConfig(num_heads=8, num_kv_heads=2, hidden_size=64), 4)
    with pytest.raises(UsageError, match=r"model.num_kv_heads=3 must divide model.num_heads=8"):
        check_heads(LLMModelConfig(num_heads=8, num_kv_heads=3, hidden_size=64))


def test_family_datasets_are_shard_backed_map_datasets(manager: PluginManager) -> None:
    config = compose_config(manager, ["recipe=llm_tiny"])
    windows = LLMFamily().build_dataset(config, "val")
    assert isinstance(windows, ShardBackedDataset) and isinstance(windows, MapDataset)
    assert windows.lost is windows.samples.lost and windows.documents is windows.samples
    assert len(windows) == len(windows.lengths) > len(windows.samples)  # windows, not documents
