"""Meta-tests that keep the hook surface honest (as datasette's): docstring, docs section, test."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from jevons.framework import hookspecs
from jevons.framework.plugin_manager import hookspec_names

TESTS = Path(__file__).resolve().parents[1]
DOCS = TESTS.parent / "docs" / "hooks.md"
DESIGN_TABLE = [
    "register_recipes",
    "register_config",
    "register_kernels",
    "configure",
    "replace_attention",
    "replace_ffn",
    "modify_model",
    "make_objective",
    "make_optimizer",
    "make_batch_sampler",
    "make_generator",
    "register_callbacks",
]


def _signature(name: str) -> str:
    return f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")


def _test_names() -> set[str]:
    names = set()
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        names.update(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    return names


def test_every_hook_of_the_design_exists_in_order() -> None:
    assert hookspec_names() == DESIGN_TABLE


@pytest.mark.parametrize("name", DESIGN_TABLE)
def test_hook_has_docstring_docs_section_and_test(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.splitlines()) >= 3, f"{name} needs a docstring saying when, arguments and return"
    assert ":return:" in doc
    assert f"### `{_signature(name)}`" in DOCS.read_text(), f"docs/hooks.md needs a section '### `{_signature(name)}`'"
    assert f"test_hook_{name}" in _test_names(), f"no test named test_hook_{name}"
