"""Instruction pairs built from this interpreter's standard library: a function's signature as the prompt,
its docstring as the response.

Thousands of examples of widely varying length (a one-line docstring to a page),
read with ``ast`` from the sources (nothing imported, nothing downloaded): the
instruction data of the ``llama_sft_tiny`` recipe (the built-in source
``llm-stdlib-chat``, :data:`STDLIB_CHAT_SOURCE`), its tests and
``benchmarks/llm_packing.py``. The order is sorted by module path and line, so
the same interpreter gives the same pairs.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jevons.framework.family import DataSource

SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def signature_docstring_pairs(limit: int | None = None, min_chars: int = 20) -> list[dict[str, str]]:
    """Up to ``limit`` ``{"prompt", "response"}`` pairs: "Document ``def name(args)`` from module ..." and the
    docstring, for every public function or method with a docstring of at least ``min_chars`` characters."""
    pairs = []
    for module, node in _functions():
        docstring = ast.get_docstring(node)
        if not docstring or len(docstring) < min_chars:
            continue
        signature = f"def {node.name}({ast.unparse(node.args)})"
        pairs.append({"prompt": f"Write the docstring of `{signature}` from {module}.", "response": docstring})
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def _functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    root = sysconfig.get_paths()["stdlib"]
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS and not f.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            module = os.path.relpath(path, root).removesuffix(".py").replace(os.sep, ".")
            functions = [
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_")
            ]
            for node in sorted(functions, key=lambda n: n.lineno):
                yield module, node


def build_stdlib_chat(directory: Path, progress: bool) -> None:
    """The built-in ``llm-stdlib-chat``: every pair, imported as ``jevons data import chat`` imports a user's
    jsonl, with the tokenizer and chat template of the built-in ``llm-tiny-llama`` (built first if missing)."""
    from jevons.framework.data.cache import ensure_built
    from jevons.framework.data.importing.engine import run_import
    from jevons.recipes.llm.chat_importer import ChatImporter, ChatImportOptions
    from jevons.recipes.llm.tiny_llama import TINY_LLAMA_SOURCE

    tokenizer = ensure_built(TINY_LLAMA_SOURCE, directory.parent, progress)  # the data cache's root
    with tempfile.TemporaryDirectory() as scratch:
        rows = Path(scratch) / "stdlib_pairs.jsonl"
        rows.write_text("".join(json.dumps(pair) + "\n" for pair in signature_docstring_pairs()), encoding="utf-8")
        options = ChatImportOptions(out=str(directory), tokenizer=str(tokenizer), workers=0, progress=progress)
        run_import(ChatImporter(options), [str(rows)])


STDLIB_CHAT_SOURCE = DataSource(
    name="llm-stdlib-chat",
    description="standard-library signatures as prompts, their docstrings as responses, in llm-tiny-llama's tokens",
    build=build_stdlib_chat,
)
