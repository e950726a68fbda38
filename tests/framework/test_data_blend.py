"""Blending data folders with weights: ``data.source=[DIR_A:0.7,DIR_B:0.3]``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jevons.framework.data.blend import BlendedDataset, blend_counts, parse_sources
from jevons.framework.errors import UsageError


class _Numbers:
    """A map-style dataset of ``offset + i`` with length ``i + 1``."""

    def __init__(self, size: int, offset: int) -> None:
        self.items = [offset + i for i in range(size)]
        self.lengths = np.arange(1, size + 1)[:, None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> int:
        return self.items[index]

    @staticmethod
    def collate(samples: list[int]) -> list[int]:
        return samples


def test_sources_parse_with_and_without_weights() -> None:
    assert parse_sources("llm-prose") == [("llm-prose", None)]
    assert parse_sources(["/data/a:0.7", "/data/b:0.3"]) == [("/data/a", 0.7), ("/data/b", 0.3)]
    assert parse_sources(["/data/a", "/data/b"]) == [("/data/a", None), ("/data/b", None)]
    assert parse_sources(["C:/corpus:2", "/x:y"]) == [("C:/corpus", 2.0), ("/x:y", None)]  # a path's colons stay
    assert parse_sources(["/only:0.5"]) == [("/only", None)]  # one source: nothing to weigh
    with pytest.raises(UsageError, match=r"must be a positive number"):
        parse_sources(["/a:0", "/b:1"])


def test_counts_follow_the_weights_and_add_up() -> None:
    assert blend_counts([100, 300], [0.7, 0.3]) == [280, 120]
    assert blend_counts([100, 300], [None, None]) == [100, 300]
    assert blend_counts([3, 4], [1.0, 1.0]) == [4, 3]  # 3.5 each: the remainder goes to the first
    with pytest.raises(UsageError, match=r"every source a weight"):
        blend_counts([3, 4], [1.0, None])


def test_a_blend_draws_each_source_its_share_repeating_an_upweighted_one() -> None:
    small, large = _Numbers(10, 0), _Numbers(90, 1000)
    blend = BlendedDataset([small, large], [0.5, 0.5], ["small", "large"], seed=3)
    items = [blend[i] for i in range(len(blend))]
    assert len(blend) == 100 and blend.counts == [50, 50]
    assert sorted(i for i in items if i < 1000) == sorted(list(range(10)) * 5)  # five passes over the small source
    assert len({i for i in items if i >= 1000}) == 50  # a subset of the large one, none twice
    assert [blend.lengths[i, 0] for i in range(5)] == [(items[i] % 1000) + 1 for i in range(5)]
    again = BlendedDataset([small, large], [0.5, 0.5], ["small", "large"], seed=3)
    assert [again[i] for i in range(len(again))] == items  # seeded: every rank and resumed run alike


@pytest.fixture(scope="module")
def two_imports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two text imports sharing one tokenizer, and a third with its own."""
    from pydoc_data import topics

    from jevons.framework.data.importing.engine import run_import
    from jevons.recipes.llm.importer import TextImporter, TextImportOptions

    root = tmp_path_factory.mktemp("blend")
    texts = sorted(set(topics.topics.values()))
    for name, part in (("a", texts[:40]), ("b", texts[40:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))

    def imported(name: str, source: str, **settings: Any) -> Path:
        out = root / name
        options = TextImportOptions(out=str(out), workers=0, val_fraction=0.2, progress=False, **settings)
        run_import(TextImporter(options), [str(root / source)])
        return out

    first = imported("A", "a.jsonl", vocab_size=300)
    return first, imported("B", "b.jsonl", tokenizer=str(first)), imported("C", "b.jsonl", vocab_size=320)


def test_an_llm_trains_on_a_weighted_blend_of_imports(
    two_imports: tuple[Path, Path, Path], tiny: Callable[..., list[str]], train: Callable[..., Any]
) -> None:
    first, second, _ = two_imports
    result = train(tiny(f"data.source=[{first}:0.7,{second}:0.3]", "trainer.max_steps=2"))
    assert result.summary["steps"] == 2


def test_blending_imports_of_different_tokenizers_is_refused(
    two_imports: tuple[Path, Path, Path], tiny: Callable[..., list[str]], train: Callable[..., Any]
) -> None:
    first, _, other = two_imports
    with pytest.raises(UsageError, match=r"whose tokenizer.json differ"):
        train(tiny(f"data.source=[{first},{other}]", "trainer.max_steps=1"))
