"""The llm export is a Hugging Face Llama folder: transformers loads it and its logits are Jevons' logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # in the test extra, so CI runs this


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, smoke: dict[str, list[str]]) -> Path:
    from jevons.framework.run import train

    return train([*smoke["llm"], f"run.root={tmp_path_factory.mktemp('runs')}"], autoload=False).run_dir


def _ours(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.framework.inference import load_run

    with distributed.initialized(ParallelConfig()):
        run = load_run(run_dir)
        with torch.no_grad():
            return run.model(ids)


def test_transformers_loads_the_export_and_its_logits_match(command, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    result = command(["jevons", "export", f"run_dir={run_dir}", f"out={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["The with statement is used to wrap the execution", "Return the number of items in a container."]
    from jevons.recipes.llm.data import load_tokenizer

    ours_tokenizer = load_tokenizer(out)
    encoded = [tokenizer(t)["input_ids"][:16] for t in texts]
    assert encoded == [ours_tokenizer.encode(t).ids[:16] for t in texts]  # the same ids either way
    ids = torch.tensor(encoded)
    with torch.no_grad():
        theirs = model(ids).logits
    ours = _ours(run_dir, ids)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-4
    # Generation through transformers runs too (greedy, a few tokens).
    assert model.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 19)


def test_tied_embeddings_export_without_a_separate_head(tmp_path: Path) -> None:
    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.recipes.llm.export import export_hf
    from jevons.recipes.llm.model import DecoderLM
    from jevons.recipes.llm.shape import TransformerShapeConfig

    shape = TransformerShapeConfig(
        hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, max_seq_len=16, tie_embeddings=True
    ).resolve(vocab_size=128)
    from tokenizers import Tokenizer, models

    tokenizer = tmp_path / "tokenizer.json"  # a user's, as an import copies it: its end-of-document token is </s>
    Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>")).save(str(tokenizer))
    with distributed.initialized(ParallelConfig()):
        torch.manual_seed(0)
        ours = DecoderLM(shape).eval()
        export_hf(ours, tmp_path / "hf", tokenizer)
        ids = torch.randint(0, 128, (2, 16))
        with torch.no_grad():
            expected = ours(ids)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == 1
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (model(ids).logits - expected).abs().max().item() < 1e-4
    with pytest.raises(FileExistsError, match="exists"):
        export_hf(ours, tmp_path / "hf", tokenizer)  # never over an existing export


@pytest.mark.parametrize("qkv_bias", [False, True], ids=["llama", "qwen2"])
def test_own_models_export_their_rope_scaling_and_qkv_biases(tmp_path: Path, qkv_bias: bool) -> None:
    """A decoder of Jevons' own with Llama-3 rope scaling (and QKV biases: a Qwen2) exports to what transformers
    runs to the same logits, at positions past the scaling's original context."""
    from tokenizers import Tokenizer, models

    from jevons.framework import distributed
    from jevons.framework.config.schema import ParallelConfig
    from jevons.recipes.llm.export import export_hf
    from jevons.recipes.llm.model import DecoderLM
    from jevons.recipes.llm.shape import RopeScaling, TransformerShapeConfig

    scaling = RopeScaling("llama3", factor=8.0, original_max_position_embeddings=8)
    shape = TransformerShapeConfig(
        hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64, rope_theta=500000.0,
        rope_scaling=scaling, qkv_bias=qkv_bias,
    ).resolve(vocab_size=128)  # fmt: skip
    tokenizer = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>")).save(str(tokenizer))
    with distributed.initialized(ParallelConfig()):
        torch.manual_seed(0)
        ours = DecoderLM(shape).eval()
        with torch.no_grad():
            for name, param in ours.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.5)  # biases start at zero: give them values that show
        export_hf(ours, tmp_path / "hf", tokenizer)
        ids = torch.randint(0, 128, (2, 48))
        with torch.no_grad():
            expected = ours(ids)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert model.config.rope_parameters["rope_type"] == "llama3"
    with torch.no_grad():
        assert (model(ids).logits - expected).abs().max().item() < 1e-4


def test_export_mistakes_are_refused_before_anything_loads(command, tmp_path: Path) -> None:
    result = command(["jevons", "export", f"run_dir={tmp_path}", "format=onnx"], cwd=tmp_path)
    assert (
        result.returncode == 2
        and "Unknown export option(s) format; options: run_dir, checkpoint, out, adapter, ema." in result.stderr
    )
    result = command(["jevons", "export", "out=x"], cwd=tmp_path)
    assert result.returncode == 2 and "jevons export needs run_dir=PATH" in result.stderr
