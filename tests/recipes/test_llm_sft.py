"""Instruction fine-tuning of an imported checkpoint (recipe ``llama_sft_tiny``): packing leaves each example's loss
as it is alone, 30 steps lower the response loss transformers measures on held-out conversations, a resumed run
repeats the straight one exactly, and every mistake in ``model.pretrained`` is refused before anything is written."""

from __future__ import annotations

import csv
import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jevons.framework import distributed
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.errors import UsageError
from jevons.framework.plugin_manager import PluginManager
from jevons.recipes.llm.family import LLMFamily
from jevons.recipes.llm.sft_data import ChatExamples, PackedExamples

RECIPE = ["recipe=llama_sft_tiny", "trainer.progress_bar=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def config() -> Any:
    """The recipe's config, its built-ins (tiny Llama folder, standard-library chat data) made in the data cache."""
    return compose_config(PluginManager.load(autoload=False), RECIPE)


def _examples(config: Any, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    examples = ChatExamples.from_folder(LLMFamily().data_dir(config), "val", config.data)
    assert isinstance(examples, PackedExamples)  # the recipe packs
    return [examples.examples[i] for i in range(count)]


def _per_example_loss(logits: torch.Tensor, batch: dict[str, Any], example_of: torch.Tensor) -> list[float]:
    """Mean response cross-entropy of each example, ``example_of`` giving each position's example (-1: none)."""
    per_token = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).double(), batch["targets"].flatten(), reduction="none"
    )
    mask, example_of = batch["loss_mask"].flatten().double(), example_of.flatten()
    return [
        float((per_token * mask)[example_of == e].sum() / mask[example_of == e].sum())
        for e in range(int(example_of.max()) + 1)
    ]


def test_first_fit_packing_is_first_fit_decreasing() -> None:
    """The tree search packs exactly as scanning the bins in order does, every item once, no bin over capacity."""
    from jevons.recipes.llm.sft_data import pack_first_fit

    lengths = np.minimum(np.random.default_rng(0).lognormal(4.8, 0.8, 3000).astype(np.int64) + 1, 512)
    bins: list[list[int]] = []
    free: list[int] = []
    for index in np.argsort(-lengths, kind="stable"):
        number = next((n for n, room in enumerate(free) if room >= lengths[index]), len(bins))
        if number == len(bins):
            bins.append([])
            free.append(512)
        bins[number].append(int(index))
        free[number] -= int(lengths[index])
    packed = pack_first_fit(lengths, 512)
    assert [row.tolist() for row in packed] == [sorted(b) for b in bins]
    assert sorted(np.concatenate(packed).tolist()) == list(range(3000))
    assert max(int(lengths[row].sum()) for row in packed) <= 512 and len(packed) < 3000 / 3


def test_packed_rows_give_each_example_the_loss_it_has_alone(config: Any) -> None:
    from jevons.recipes.llm.pretrained import build_pretrained
    from jevons.recipes.llm.sft_data import pack_first_fit

    examples = _examples(config, 16)
    rows = pack_first_fit(np.asarray([len(tokens) - 1 for tokens, _ in examples]), config.data.seq_len)
    assert len(rows) < len(examples) / 2  # several examples share each row
    with distributed.initialized(ParallelConfig()), torch.no_grad():
        model = build_pretrained(config.model.pretrained, config.data.seq_len).float().eval()
        padded = ChatExamples.collate(examples)
        row_of = torch.arange(len(examples))[:, None].expand_as(padded["input_ids"])  # padding: loss_mask 0
        alone = _per_example_loss(model(padded["input_ids"]), padded, row_of)
        packed = PackedExamples.collate([[examples[int(j)] for j in row] for row in rows])
        logits = model(packed["input_ids"], packed["position_ids"], packed["segment_ids"])
        index = torch.tensor([[int(j) for j in row] + [-1] * (len(examples) - len(row)) for row in rows])
        segments = packed["segment_ids"]
        example_of = torch.where(segments >= 0, index.gather(1, segments.clamp(min=0)), -1)
        together = _per_example_loss(logits, packed, example_of)
    assert np.allclose(together, alone, rtol=0, atol=1e-5), np.abs(np.subtract(together, alone)).max()
    assert len(set(np.round(alone, 3))) > 8  # the examples differ: the check is not one number many times


class Scripted(torch.nn.Module):
    """A stand-in decoder whose greedy continuation is ``script``, one token per call."""

    def __init__(self, script: list[int], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.shape = types.SimpleNamespace(max_seq_len=64)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the generator reads the device from a parameter

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_generation_stops_at_any_end_of_sequence_id_of_generation_config(config: Any) -> None:
    with distributed.initialized(ParallelConfig()):
        generator = LLMFamily().default_generator(Scripted([], 1), config)
        tokenizer = generator.tokenizer
        end_of_text = tokenizer.token_to_id("<|end_of_text|>")
        assert generator.stop_ids == {end_of_text, tokenizer.token_to_id("<|eot_id|>")}  # generation_config.json's
        words = tokenizer.encode("Return the", add_special_tokens=False).ids
        generator.model = Scripted([*words, end_of_text, *words], config.model.vocab_size)
        (text,) = generator(["Hi"], max_new_tokens=10, temperature=0)
    prompt = generator.encode("Hi")
    assert text == tokenizer.decode([*prompt, *words, end_of_text], skip_special_tokens=False)
    assert generator.model.calls == 3  # stopped at the second end-of-sequence id, not only at eos_token


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]


def _response_loss(folder: Path, examples: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """transformers' mean cross-entropy on the response tokens of ``examples`` (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, mask in examples:
            ids = torch.from_numpy(tokens)[None]
            per_token = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
            keep = torch.from_numpy(mask[1:])
            total, count = total + float(per_token[keep].sum()), count + int(keep.sum())
    return total / count


def test_sft_lowers_the_response_loss_resumes_exactly_and_exports_what_transformers_loads(
    config: Any, train: Callable[..., Any], crasher: Callable[[int], Any], tmp_path: Path
) -> None:
    from jevons.framework.cli.jevons import main as jevons

    common = [
        *RECIPE,
        "trainer.max_steps=30",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=30",
        "trainer.limit_val_batches=2",
        "checkpoint.every_n_steps=15",
    ]
    straight = train([*common, f"run.dir={tmp_path / 'straight'}"])
    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="injected crash at step 20"):
        train([*common, f"run.dir={interrupted}", "plugins=[crasher]"], plugins=[crasher(20)])
    resumed = train([*common, f"run.dir={interrupted}", "checkpoint.resume=auto"])
    assert resumed.summary["resumed_from_step"] == 15
    losses = _losses(straight.run_dir)
    assert len(losses) == 30 and _losses(interrupted) == losses  # exact, not approximately
    assert 0.9 < straight.summary["train_metrics"]["real_token_fraction"] <= 1.0  # packed rows: little padding

    exported = tmp_path / "export"
    assert jevons(["export", f"run_dir={straight.run_dir}", f"out={exported}"]) == 0
    assert jevons(["export", f"run_dir={straight.run_dir}", f"out={exported}"]) == 2  # never over an export
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (exported / name).read_bytes() == (Path(config.model.pretrained) / name).read_bytes()
    held_out = _examples(config, 24)
    before, after = _response_loss(Path(config.model.pretrained), held_out), _response_loss(exported, held_out)
    assert before - after > 0.8, (before, after)  # nats per response token: 6.03 to 4.74 when written

    samples = tmp_path / "samples"
    prompt = "Write the docstring of `def loads(s)` from json."
    assert (
        jevons(["sample", f"run_dir={straight.run_dir}", f"out={samples}", f"prompt={prompt}", "max_new_tokens=8"]) == 0
    )
    text = next(samples.glob("*.txt")).read_text()
    assert text.startswith(f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>")
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n" in text  # the folder's template, generation prompt


def test_the_folder_overrules_a_shape_key_the_command_line_set_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overruled = compose_config(PluginManager.load(autoload=False), [*RECIPE, "model.hidden_size=96"])
    assert overruled.model.hidden_size == 64 and overruled.model.num_kv_heads == 2
    assert "sets model.hidden_size=64 (not 96)" in capsys.readouterr().err


@pytest.fixture
def tiny_llama(config: Any, tmp_path: Path) -> Path:
    """A copy of the built-in tiny Llama folder, to spoil."""
    return Path(shutil.copytree(config.model.pretrained, tmp_path / "tiny-llama"))


def _edit_config(folder: Path, **changes: Any) -> None:
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **changes}))


def _pickle_only(folder: Path) -> None:
    """The weights as a pytorch_model.bin that holds a Python object: torch.load(weights_only=True) refuses it."""
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({"state_dict": tensors, "how": UsageError("an arbitrary object")}, folder / "pytorch_model.bin")


SPOILED: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "no config.json": (lambda f: (f / "config.json").unlink(), [], "config.json"),
    "pickle-only weights": (_pickle_only, [], "weights_only"),
    "remote code": (lambda f: _edit_config(f, auto_map={"AutoModelForCausalLM": "modeling.MyLM"}), [], "remote code"),
    "tokenizer larger than the embedding": (lambda f: _edit_config(f, vocab_size=300), [], "300"),
    "seq_len beyond the positions": (lambda f: None, ["data.seq_len=2048"], "data.seq_len=2048 is beyond"),
}


@pytest.mark.parametrize("mistake", SPOILED)
def test_a_spoiled_checkpoint_exits_2_naming_the_problem_and_writes_nothing(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mistake: str
) -> None:
    from jevons.framework.cli.train import main

    spoil, overrides, expected = SPOILED[mistake]
    spoil(tiny_llama)
    before = sorted(p.name for p in tiny_llama.iterdir())
    runs = tmp_path / "runs"
    assert main([*RECIPE, f"model.pretrained={tiny_llama}", f"run.root={runs}", *overrides]) == 2
    message = capsys.readouterr().err
    assert expected in message and "Traceback" not in message, message
    assert not runs.exists()
    assert sorted(p.name for p in tiny_llama.iterdir()) == before
