"""The llm family: its data, model, objective and generator, each against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jevons.framework import distributed
from jevons.framework.config.compose import compose_config
from jevons.framework.config.schema import ParallelConfig
from jevons.framework.plugin_manager import PluginManager
from jevons.recipes.llm.data import PAD_ID, TokenWindows, load_tokenizer
from jevons.recipes.llm.family import LLMDataConfig, LLMFamily
from jevons.recipes.llm.generate import TextGenerator
from jevons.recipes.llm.model import DecoderLM
from jevons.recipes.llm.objective import NextTokenObjective
from jevons.recipes.llm.shape import TransformerShapeConfig


@pytest.fixture(scope="module")
def groups():
    with distributed.initialized(ParallelConfig()):
        yield


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager.load(autoload=False)


@pytest.fixture(scope="module")
def data_dir(manager: PluginManager) -> Path:
    config = compose_config(manager, ["recipe=llm_tiny"])
    return LLMFamily().data_dir(config)


def test_prose_corpus_splits_documents_and_records_its_unigram_entropy(data_dir: Path) -> None:
    tokenizer = load_tokenizer(data_dir)
    assert tokenizer.get_vocab_size() == 512 and tokenizer.token_to_id("<|endoftext|>") == PAD_ID
    meta = json.loads((data_dir / "meta.json").read_text())
    assert 5.0 < meta["unigram_entropy_nats"] < 5.6 and meta["train_tokens"] > 900_000
    train, val = (json.loads((data_dir / f"{s}.json").read_text()) for s in ("train", "val"))
    n_train, n_val = (sum(s["nsamples"] for s in split["shardlist"]) for split in (train, val))
    assert n_val == (n_train + n_val + 9) // 10  # every tenth document, sorted by name, is held out


def test_windows_cover_every_target_token_exactly_once(data_dir: Path) -> None:
    windows = TokenWindows.from_folder(data_dir, "val", LLMDataConfig(seq_len=64))
    documents = windows.documents
    targets = sum(len(windows[i]) - 1 for i in range(len(windows)))
    assert targets == int((documents.lengths[:, 0] - 1).sum())
    assert windows.lengths.max() == 65 and np.array_equal(
        windows.lengths, [len(windows[i]) for i in range(len(windows))]
    )
    first = documents[0]
    assert np.array_equal(windows[0], first[:65]) and np.array_equal(windows[1][:1], first[64:65])  # one token overlap


def test_collate_pads_right_and_masks_the_padding() -> None:
    batch = TokenWindows.collate([np.array([5, 6, 7, 8]), np.array([9, 10])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, PAD_ID, PAD_ID]]
    assert batch["targets"].tolist() == [[6, 7, 8], [10, PAD_ID, PAD_ID]]
    assert batch["loss_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _tiny_model(tie: bool = False) -> DecoderLM:
    torch.manual_seed(0)
    shape = TransformerShapeConfig(
        hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, max_seq_len=16, tie_embeddings=tie
    ).resolve(64)
    return DecoderLM(shape)


def test_decoder_is_causal_and_shapes_are_right(groups) -> None:
    model = _tiny_model()
    ids = torch.randint(0, 64, (2, 10))
    logits = model(ids)
    assert logits.shape == (2, 10, 64)
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 64
    assert torch.allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)  # the future never leaks back
    assert not torch.allclose(model(changed)[:, 6:], logits[:, 6:])
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tied_embeddings_share_the_output_head(groups) -> None:
    untied, tied = _tiny_model(), _tiny_model(tie=True)
    assert tied.head is None
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 64 * 32
    assert tied(torch.randint(0, 64, (1, 5))).shape == (1, 5, 64)


def test_objective_equals_masked_cross_entropy(groups) -> None:
    model = _tiny_model()
    batch = TokenWindows.collate([np.arange(1, 12) % 64, np.arange(3, 9) % 64])
    out = NextTokenObjective()(model, batch)
    logits = model(batch["input_ids"])
    mask = batch["loss_mask"].bool()
    expected = F.cross_entropy(logits[mask], batch["targets"][mask])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.weight == 10 + 5


def test_generator_continues_prompts_deterministically(groups, data_dir: Path) -> None:
    tokenizer = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = DecoderLM(
        TransformerShapeConfig(hidden_size=32, num_layers=1, num_heads=2, ffn_hidden_size=64, max_seq_len=32).resolve(
            512
        )
    )
    generate = TextGenerator(model, tokenizer)
    first = generate(["The function"], max_new_tokens=8, seed=1)
    assert first == generate(["The function"], max_new_tokens=8, seed=1)
    assert first[0].startswith("The function") and len(tokenizer.encode(first[0]).ids) >= 8
    greedy = generate(["The function"], max_new_tokens=40, temperature=0)  # past max_seq_len: the window slides
    assert greedy[0].startswith("The function")


def test_llm_125m_composes_and_builds_at_reduced_size(groups, manager: PluginManager) -> None:
    full = compose_config(manager, ["recipe=llm_125m"])
    assert (full.model.hidden_size, full.model.num_layers, full.model.num_heads, full.model.max_seq_len) == (
        768,
        12,
        12,
        1024,
    )
    assert full.model.tie_embeddings and full.trainer.precision == "bf16-mixed"
    reduced = compose_config(
        manager, ["recipe=llm_125m", "model.hidden_size=96", "model.num_layers=2", "model.num_heads=3"]
    )
    model = LLMFamily().build_model(reduced)
    per_layer = 4 * 96 * 96 + 3 * 96 * 256 + 2 * 96  # attention, SwiGLU (8/3 x 96 -> 256), two norms
    assert sum(p.numel() for p in model.parameters()) == 2 * per_layer + 512 * 96 + 96
    assert model(torch.randint(0, 512, (1, 20))).shape == (1, 20, 512)


def test_masked_grouped_attention_with_key_value_heads_repeated_is_the_same() -> None:
    """CUDA's masked grouped-query SDPA would fall to the math kernel, so there key/value heads are repeated over
    their query groups first: the same attention, checked here on the CPU (where both paths run)."""
    from jevons.recipes.llm.model import grouped_attention, segment_mask

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 12, 16), torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)
    mask = segment_mask(torch.tensor([[0] * 5 + [1] * 7, [0] * 12]))
    grouped = grouped_attention(q, k, v, mask, expand_kv=False)
    repeated = grouped_attention(q, k, v, mask, expand_kv=True)
    assert torch.allclose(grouped, repeated, atol=1e-6)
    reference = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask)
    assert torch.allclose(grouped, reference, atol=1e-6)
    assert not torch.allclose(grouped, grouped_attention(q, k, v, None), atol=1e-3)  # the mask matters here
