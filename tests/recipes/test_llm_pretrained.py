"""Released Hugging Face checkpoints in: Llama, Qwen2 and Mistral folders made by transformers (tiny, random),
loaded at TP=1 and TP=2, against transformers' own logits; both config spellings; round trips; memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from jevons.framework import distributed
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.launch.ranks import run_ranks
from jevons.recipes.llm.hf_config import read_pretrained_config
from jevons.recipes.llm.pretrained import build_pretrained

transformers = pytest.importorskip("transformers")

WORKER = Path(__file__).with_name("llm_rank_worker.py")
VOCAB = 300
SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # grouped-query attention everywhere; tied + Llama-3 scaling; QKV bias + untied; Mistral's window unused
    "llama": ("LlamaConfig", {"tie_word_embeddings": True, "rope_parameters": {**LLAMA3_ROPE, "rope_theta": 5e5}}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": 4096}),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor a distinct value (transformers zeroes biases and sets gains to one)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            scale = 0.05 if param.ndim > 1 else 0.5
            param.copy_(torch.randn(param.shape, generator=generator) * scale + (param.ndim == 1))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fp32 folder per architecture, saved with save_pretrained (transformers 5's spelling)."""
    root = tmp_path_factory.mktemp("hf")
    made = {}
    for seed, (name, (config_class, extra)) in enumerate(CASES.items()):
        config = getattr(transformers, config_class)(**SIZES, **extra)
        model = transformers.AutoModelForCausalLM.from_config(config)
        _randomise(model, seed)
        model.save_pretrained(root / name)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))


def _theirs(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_transformers_at_tp1(folders, ids, name: str) -> None:
    with distributed.initialized(ParallelConfig()):
        model = build_pretrained(folders[name], seq_len=128).eval()
        with torch.no_grad():
            padded = model(ids)  # (B, T, 384): the vocabulary of 300 padded for tensor parallelism
    assert model.shape.num_kv_heads == 2 and model.shape.qkv_bias == (name == "qwen2")
    assert (model.head is None) == (name == "llama")
    theirs = _theirs(folders[name], ids)
    assert padded.shape[-1] > VOCAB and (padded[..., :VOCAB] - theirs).abs().max().item() < 1e-4
    assert torch.isneginf(padded[..., VOCAB:]).all()  # the padding takes no probability: the loss is theirs
    targets = ids[:, 1:].flatten()
    loss, their_loss = (F.cross_entropy(x[:, :-1].flatten(0, 1), targets) for x in (padded, theirs))
    assert abs(loss.item() - their_loss.item()) < 1e-5


def test_a_deferred_load_waits_on_the_meta_device_and_then_fills_the_same_tensors(folders) -> None:
    """What a sharded build does (``framework/build.py``): the model stays on the meta device through
    the hooks, then its plan fills it (here unsharded, so the tensors are the whole ones)."""
    from jevons.framework.weights import deferred_loading, take_deferred

    with distributed.initialized(ParallelConfig()):
        direct = dict(build_pretrained(folders["qwen2"]).named_parameters())
        with deferred_loading():
            model = build_pretrained(folders["qwen2"])
        assert all(p.is_meta for p in model.parameters())
        model.adapter = torch.nn.Linear(2, 2)  # a plugin's own module, made with values: they are kept
        kept = model.adapter.weight.detach().clone()
        moved = model.layers[0].attn.q  # a hook moving a planned weight (peft's base_layer): found again
        model.layers[0].attn.q = torch.nn.Sequential(moved)
        deferred = take_deferred(model)
        assert deferred is not None and deferred.load(model, "cpu") == len(direct)
        assert torch.equal(model.adapter.weight, kept)
        for kind in ("weight", "bias"):  # qwen2's projections have biases
            direct[f"layers.0.attn.q.0.{kind}"] = direct.pop(f"layers.0.attn.q.{kind}")
        for name, value in direct.items():
            assert torch.equal(model.get_parameter(name), value), name
        # A hook that derived a parameter from the unloaded weights: refused by name before any load.
        with deferred_loading():
            model = build_pretrained(folders["qwen2"])
        model.derived = torch.nn.Linear(2, 2, device="meta")
        with pytest.raises(UsageError, match=r"parameters \['derived.weight', 'derived.bias'\] \(2 in all\)"):
            take_deferred(model)


def test_logits_equal_transformers_at_tp2(folders, ids, tmp_path: Path) -> None:
    torch.save(ids, tmp_path / "ids.pt")
    for name in CASES:
        out = tmp_path / f"{name}.pt"
        run_ranks([sys.executable, str(WORKER), "logits", str(folders[name]), str(tmp_path / "ids.pt"), str(out)], 2)
        ours = torch.load(out, weights_only=True)[..., :VOCAB]
        assert (ours - _theirs(folders[name], ids)).abs().max().item() < 1e-4, name


RELEASED_LLAMA_3_2 = {
    # Llama-3.2-1B's config.json as Meta released it (the old spelling), at tiny sizes.
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": VOCAB,
}
RELEASED_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 64,
    "intermediate_size": 96,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": VOCAB,
}
RELEASED_MISTRAL = {
    "architectures": ["MistralForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 64,
    "intermediate_size": 96,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": VOCAB,
}


@pytest.mark.parametrize(
    "raw", [RELEASED_LLAMA_3_2, RELEASED_QWEN2, RELEASED_MISTRAL], ids=["llama", "qwen2", "mistral"]
)
def test_released_spelling_reads_as_transformers_5_writes_it(raw: dict[str, Any], tmp_path: Path, ids) -> None:
    """A hand-written config.json in the released spelling (rope_theta, rope_scaling, torch_dtype) and the
    same config saved by today's transformers (rope_parameters, dtype) give the same model."""
    released, resaved = tmp_path / "released", tmp_path / "resaved"
    released.mkdir()
    (released / "config.json").write_text(json.dumps(raw))
    config = transformers.AutoConfig.from_pretrained(released)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _randomise(model, 3)
    model.to(torch.bfloat16).save_pretrained(resaved)
    resaved_config = json.loads((resaved / "config.json").read_text())
    assert "rope_parameters" in resaved_config and "dtype" in resaved_config  # the other spelling
    model.save_pretrained(released)  # weights beside the hand-written config
    (released / "config.json").write_text(json.dumps(raw))
    old, new = read_pretrained_config(released, 128), read_pretrained_config(resaved, 128)
    assert old.model_keys == new.model_keys and old.dtype == new.dtype == "bfloat16"
    assert old.model_keys["qkv_bias"] == (raw["architectures"][0] == "Qwen2ForCausalLM")
    with distributed.initialized(ParallelConfig()):
        ours = build_pretrained(released, 128).eval()
        with torch.no_grad():
            logits = ours(ids)[..., :VOCAB]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (logits - theirs(ids).logits).abs().max().item() < 1e-4


def test_llama3_2_1b_sft_composes_to_the_released_shape_and_builds_on_the_meta_device(tmp_path: Path) -> None:
    """The recipe's model section is what Llama-3.2-1B's released config.json gives, and has its parameter count."""
    import dataclasses
    import shutil

    from jevons.framework.config.compose import compose_config
    from jevons.framework.plugin_manager import PluginManager
    from jevons.recipes.llm.model import DecoderLM
    from jevons.recipes.llm.pretrained import pretrained_shape

    manager = PluginManager.load(autoload=False)
    recipe = compose_config(manager, ["recipe=llama3_2_1b_sft"])
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_LLAMA_3_2, **LLAMA_3_2_1B_SIZES}))
    tiny = compose_config(manager, ["recipe=llama_sft_tiny"]).model.pretrained  # a tokenizer smaller than 128256
    shutil.copy(Path(tiny) / "tokenizer.json", tmp_path)
    released = compose_config(manager, ["recipe=llama3_2_1b_sft", f"model.pretrained={tmp_path}"])
    assert dataclasses.replace(released.model, pretrained=None) == recipe.model
    with distributed.initialized(ParallelConfig()), torch.device("meta"):
        model = DecoderLM(pretrained_shape(read_pretrained_config(tmp_path, recipe.data.seq_len)))
        from_recipe = DecoderLM(recipe.model.resolve(vocab_size=128256))
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    assert sum(p.numel() for p in from_recipe.parameters()) == 1_235_814_400


LLAMA_3_2_1B_SIZES = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
}


def _refused(raw_changes: dict[str, Any], tmp_path: Path, seq_len: int = 128) -> str:
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_MISTRAL, **raw_changes}))
    with pytest.raises(UsageError) as error:
        read_pretrained_config(tmp_path, seq_len)
    return str(error.value)


def test_fields_the_model_cannot_honour_are_refused_by_name(tmp_path: Path) -> None:
    assert "architectures=['GPT2LMHeadModel']" in _refused({"architectures": ["GPT2LMHeadModel"]}, tmp_path)
    assert "remote code" in _refused({"auto_map": {"AutoModelForCausalLM": "modeling.MyLM"}}, tmp_path)
    assert "sliding_window=64, shorter than data.seq_len=128" in _refused({"sliding_window": 64}, tmp_path)
    assert "rope type 'yarn'" in _refused({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, tmp_path)
    assert "data.seq_len=40000 is beyond the model's positions" in _refused({}, tmp_path, seq_len=40000)
    assert "hidden_act='gelu'" in _refused({"hidden_act": "gelu"}, tmp_path)
    qwen = {**RELEASED_QWEN2, "use_sliding_window": True, "sliding_window": 64}
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    with pytest.raises(UsageError, match="sliding_window=64"):
        read_pretrained_config(tmp_path, 128)
    (tmp_path / "config.json").write_text(json.dumps({**qwen, "use_sliding_window": False}))
    read_pretrained_config(tmp_path, 128)  # a window that is off does not matter
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_MISTRAL, "sliding_window": 4096}))
    read_pretrained_config(tmp_path, 128)  # nor one longer than the training window
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_QWEN2, "sliding_window": 64}))
    read_pretrained_config(tmp_path, 128)  # Qwen2's window is off unless use_sliding_window turns it on


def test_a_malformed_config_is_a_usage_error_naming_the_field(tmp_path: Path) -> None:
    without_width = {k: v for k, v in RELEASED_MISTRAL.items() if k != "hidden_size"}
    assert "has no 'hidden_size', which a MistralForCausalLM config needs" in _refused_raw(without_width, tmp_path)
    no_factor = {**RELEASED_LLAMA_3_2, "rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1.0}}
    assert "has no 'factor'" in _refused_raw(no_factor, tmp_path)
    assert "a value of the wrong kind" in _refused_raw({**RELEASED_MISTRAL, "num_hidden_layers": "many"}, tmp_path)
    assert "holds a JSON list; expected an object" in _refused_raw([RELEASED_MISTRAL], tmp_path)


def _refused_raw(raw: Any, tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UsageError) as error:
        read_pretrained_config(tmp_path, 128)
    return str(error.value)


def test_export_of_an_import_gives_back_the_checkpoints_tensors_bitwise(folders, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from jevons.recipes.llm.export import export_hf

    source = tmp_path / "bf16"
    model = transformers.AutoModelForCausalLM.from_pretrained(folders["qwen2"])
    model.to(torch.bfloat16).save_pretrained(source)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 4]}))
    with distributed.initialized(ParallelConfig()):
        ours = build_pretrained(source)
        export_hf(ours, tmp_path / "out", source / "tokenizer.json", read_pretrained_config(source))
        original, exported = load_file(source / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
        assert original.keys() == exported.keys()
        assert all(exported[k].dtype == torch.bfloat16 and torch.equal(original[k], exported[k]) for k in original)
        assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads(
            (source / "config.json").read_text()
        )
        assert (tmp_path / "out" / "generation_config.json").read_text() == (
            source / "generation_config.json"
        ).read_text()
        # And back: importing the export gives Jevons' tensors bitwise.
        again = build_pretrained(tmp_path / "out")
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), again.parameters(), strict=True))


def test_a_pickle_that_weights_only_refuses_is_refused(folders, tmp_path: Path) -> None:
    import shutil

    from jevons.framework.weights import WeightFiles

    folder = tmp_path / "pickle"
    shutil.copytree(folders["mistral"], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2), "how": UsageError("an arbitrary object")}, folder / "pytorch_model.bin")
    with pytest.raises(UsageError, match=r"pytorch_model.bin is a pickle that torch.load\(weights_only=True\) refuses"):
        WeightFiles.find(folder)
    torch.save({"weights": torch.zeros(2)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(UsageError, match=r"legacy \(pre-1.6, not zip\) format"):
        WeightFiles.find(folder)
    torch.save(
        transformers.AutoModelForCausalLM.from_pretrained(folders["mistral"]).state_dict(), folder / "pytorch_model.bin"
    )
    with distributed.initialized(ParallelConfig()):
        build_pretrained(folder)  # a weights-only pickle loads (memory-mapped)


HUNDRED_M = {
    **RELEASED_MISTRAL,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 9,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}


def test_a_tp2_or_shard2_rank_grows_by_its_share_not_a_full_copy(tmp_path: Path) -> None:
    """At 106M parameters: a TP=2 rank's anonymous memory, and an FSDP shard=2 rank's (the load deferred
    until after ``fully_shard``), grow by at most 0.6x what a one-process load's does."""
    from safetensors.torch import save_file

    from jevons.recipes.llm.hf_weights import name_table
    from jevons.recipes.llm.model import DecoderLM
    from jevons.recipes.llm.pretrained import pretrained_shape

    folder = tmp_path / "106m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HUNDRED_M))
    with distributed.initialized(ParallelConfig()), torch.device("meta"):
        meta = DecoderLM(pretrained_shape(read_pretrained_config(folder)))
    assert sum(p.numel() for p in meta.parameters()) >= 100_000_000
    shapes = {name: tuple(p.shape) for name, p in meta.named_parameters()}
    tensors = {}
    for ours, theirs in name_table(meta).items():
        rows, *rest = shapes[ours]
        rows = 32000 if ours in ("embed.weight", "head.weight") else rows // len(theirs)
        for name in theirs:
            tensors[name] = torch.randn((rows, *rest), dtype=torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"))
    del tensors
    grown = {}
    for layout, task, nproc in (("one", "memory", 1), ("tp2", "memory", 2), ("shard2", "shard-memory", 2)):
        report = tmp_path / layout
        run_ranks([sys.executable, str(WORKER), task, str(folder), str(report)], nproc)
        grown[layout] = [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(nproc)]
    full = grown["one"][0]["grown"]
    print(
        f"anonymous RSS growth: one process {full / 2**20:.0f} MiB, TP=2 ranks "
        f"{[r['grown'] / 2**20 for r in grown['tp2']]} MiB, shard=2 ranks {[r['grown'] / 2**20 for r in grown['shard2']]}"
    )
    assert full >= 0.9 * grown["one"][0]["local_parameter_bytes"]  # the measure sees the loaded weights
    for rank in (*grown["tp2"], *grown["shard2"]):
        assert rank["grown"] <= 0.6 * full, (rank, full)
    for rank in grown["shard2"]:  # each holds half of every tensor (FSDP's even cut of dimension 0)
        assert abs(rank["local_parameter_bytes"] / grown["one"][0]["local_parameter_bytes"] - 0.5) < 0.01
